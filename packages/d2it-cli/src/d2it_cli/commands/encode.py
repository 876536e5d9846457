"""`d2it encode`: cache DVAE posteriors and grain maps of a dataset (each image and its flip) for stage 2."""

import click

from d2it_cli.cache import DTYPES, VERSIONS, encode_cache
from d2it_cli.cache_layout import MODES
from d2it_cli.commands.params import BATCH, DEVICE, NON_NEGATIVE_INT, POSITIVE_INT, SEED
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.data import data_options


@click.command()
@click.option(
    "--system",
    "system_dir",
    required=True,
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory with a trained DVAE.",
)
@click.option(
    "--data",
    required=True,
    help="Images: a folder, synthetic[:N], openmoji[:split], wds:SHARDS, hf:PATH[:split], NAME:ROOT.",
)
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE, repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache directory to write.")
@click.option("--batch", default=32, show_default=True, type=BATCH)
@click.option(
    "--shard-size", default=4096, show_default=True, type=POSITIVE_INT, help="Images (each with its flip) per shard."
)
@click.option(
    "--dtype",
    type=click.Choice(sorted(DTYPES)),
    default="bf16",
    show_default=True,
    help="Storage type of the posterior parameters (bf16 halves the cache; sampling the posterior is unaffected).",
)
@click.option(
    "--grains",
    "layout",
    type=click.Choice(MODES),
    default="all",
    show_default=True,
    help="all: every grain everywhere (needed by --grain-source random); used: only each region's own grain.",
)
@click.option("--workers", default=0, show_default=True, type=NON_NEGATIVE_INT)
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Seed of the latent draws that measure the scale."
)
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache.")
@click.option("--device", type=DEVICE, help="cpu, cuda ... (default: CUDA when available; torchrun: the local GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def encode(obj, data_option, strict_data, quiet, **options):
    """Encode a dataset into a latent cache and store the latent scale (1/std) in the system record."""
    registry = obj["registry"]
    dataset_options = data_options(options["data"], strict_data, data_option, registry)
    manifest = encode_cache(
        **options, options=dataset_options, progress=not quiet, announce=click.echo, registry=registry
    )
    if manifest is not None:  # rank 0
        click.echo(
            f"encoded {manifest['count']} images (x{VERSIONS} with flips) into {len(manifest['shards'])} shard(s) at "
            f"{options['out']}; latent std {manifest['latent_std']:.4f} -> latent scale "
            f"{manifest['latent_scale']:.4f} stored in {options['system_dir']}"
        )
