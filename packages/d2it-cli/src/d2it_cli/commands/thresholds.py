"""`d2it thresholds`: dataset percentiles of region entropy, and the grain thresholds they give."""

from pathlib import Path

import click

from d2it import system as systems
from d2it_cli.commands.params import BATCH, COUNT, DEVICE, NON_NEGATIVE_INT, OPEN_UNIT_INTERVAL, POSITIVE_INT
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.data import data_options
from d2it_cli.thresholds import measure_thresholds


@click.command()
@click.option(
    "--data",
    required=True,
    help="Images: a folder, synthetic[:N], openmoji[:split], wds:SHARDS, hf:PATH[:split], NAME:ROOT (no flips).",
)
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE, repeatable.")
@click.option(
    "--system",
    "system_dir",
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory: its VAE's coder is used and the thresholds are stored in its d2it.json.",
)
@click.option(
    "--ratio",
    default=0.5,
    show_default=True,
    type=OPEN_UNIT_INTERVAL,
    help="Share r of regions coded finer than coarsest.",
)
@click.option("--image-size", type=POSITIVE_INT, help="Image size (default: the system's, else 256).")
@click.option(
    "--grains", default=2, show_default=True, type=click.IntRange(min=2), help="Number of grains (without --system)."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file for percentiles and thresholds.")
@click.option("--batch", default=64, show_default=True, type=BATCH)
@click.option("--limit", type=COUNT, help="Use only the first N images.")
@click.option("--workers", default=0, show_default=True, type=NON_NEGATIVE_INT)
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--device", type=DEVICE, help="cpu, cuda ... (default: CUDA when available).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def thresholds(obj, data_option, strict_data, quiet, **options):
    """Region entropies over a dataset: percentiles 1-99 to --out, thresholds for --ratio into the system record."""
    registry = obj["registry"]
    dataset_options = data_options(options["data"], strict_data, data_option, registry)
    doc = measure_thresholds(**options, options=dataset_options, progress=not quiet, registry=registry)
    click.echo(
        f"{doc['regions']} regions of {doc['images']} images: thresholds {[round(t, 4) for t in doc['thresholds']]} "
        f"(share above: {[round(s, 3) for s in doc['share_above']]}); wrote {options['out']}"
    )
    if options["system_dir"]:
        click.echo(f"stored the thresholds in {Path(options['system_dir']) / systems.RECORD_FILE}")
