"""`d2it pack`: an image folder -> webdataset tar shards and classes.json (then train with --data wds:...)."""

import sys
from pathlib import Path

import click

from d2it_cli.commands.params import POSITIVE_INT, SEED
from d2it_cli.data.pack import pack_folder


@click.command()
@click.option(
    "--data", "root", required=True, type=click.Path(file_okay=False), help="ImageFolder tree or flat folder."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the shards.")
@click.option("--shard-size", default=1000, show_default=True, type=POSITIVE_INT, help="Images per tar shard.")
@click.option("--prefix", default="train", show_default=True, help="Shard name prefix.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the one-off sample shuffle.")
@click.option("--no-shuffle", is_flag=True, help="Keep the folder order (shards then hold one class each).")
@click.option("--quiet", is_flag=True)
def pack(root, out, shard_size, prefix, seed, no_shuffle, quiet):
    """Pack an image folder into webdataset tar shards with the class index mapping (classes.json) beside them."""

    def progress(done, total):
        if not quiet and (sys.stdout.isatty() or done == total or done % 50 == 0):
            click.echo(f"pack: shard {done}/{total}", err=True)

    result = pack_folder(
        root, out, shard_size=shard_size, prefix=prefix, seed=None if no_shuffle else seed, progress=progress
    )
    click.echo(
        f"packed {result.count} images of {max(1, len(result.classes))} class(es) into {result.shards} shard(s); "
        f"train with --data 'wds:{result.out / result.pattern}'"
    )
    if result.unreadable:
        click.echo(
            f"warning: skipped {len(result.unreadable)} unreadable file(s) that cannot be decoded, e.g. "
            f"{Path(root) / result.unreadable[0]}; they are not in the shards",
            err=True,
        )
