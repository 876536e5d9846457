"""`d2it sample`: generate images from a trained system into PNGs, a grain-map grid and optionally samples.npz."""

import json

import click

from d2it_cli import generation
from d2it_cli.commands.params import COUNT, DEVICE
from d2it_cli.commands.sampling import sampling_options
from d2it_cli.commands.system_dir import SYSTEM_DIR


@click.command()
@click.option("--system", "system_dir", required=True, type=SYSTEM_DIR, help="Trained model directory.")
@click.option("--num", default=16, show_default=True, type=COUNT, help="Number of samples.")
@click.option("--class", "class_list", default=None, metavar="I,J,...", help="Class indices, cycled over the samples.")
@sampling_options(batch=16)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="sampler.OPTION=VALUE",
    help="Override a sampler option, e.g. --set sampler.spacing=karras.",
)
@click.option("--device", default=None, type=DEVICE, help="Device (default: CUDA when available).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--npz", is_flag=True, help="Also write samples.npz (arr_0 uint8 NHWC, as the ADM evaluation suite reads)."
)
@click.option("--no-resume", is_flag=True, help="Discard finished shards from an earlier run instead of reusing them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_obj
def sample(
    obj,
    system_dir,
    num,
    class_list,
    sampling,
    sets,
    device,
    out,
    npz,
    no_resume,
    as_json,
    quiet,
):
    """Generate samples from a trained system: PNGs, a grid with grain-map overlays and (--npz) samples.npz."""
    settings = generation.SampleSettings(num=num, classes=generation.parse_classes(class_list), **sampling)
    sampler_sets, _ = generation.split_sampler_sets(sets)
    summary = generation.sample_images(
        system_dir,
        out,
        settings,
        sampler_sets=sampler_sets,
        registry=(obj or {}).get("registry"),
        device=device,
        progress=not quiet,
        resume=not no_resume,
        npz=npz,
    )
    if summary is None:  # not rank 0
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['num']} samples to {summary['samples']} and the grid to {summary['grid']}")
    if "fine_ratio" in summary:
        click.echo(f"fine-grained regions: {100 * summary['fine_ratio']:.1f}%")
    if npz:
        click.echo(f"wrote {summary['npz']}")
