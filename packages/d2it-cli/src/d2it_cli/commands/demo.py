"""`d2it demo`: train and sample a tiny D²iT end to end on built-in data and write an HTML report."""

import time

import click

from d2it_cli import outputs
from d2it_cli.commands.params import DEVICE, SEED
from d2it_cli.demo import run_demo


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (index.html, system, samples, figures).")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: CUDA when available).")
@click.option("--quick", is_flag=True, help="Smaller settings (about three minutes on two CPU cores).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--quiet", is_flag=True, help="No progress bars or step headers.")
@click.option("--plan", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a plan setting, e.g. content_steps=3000 (vae/backbone/grain: ';' between items).")
@click.pass_context
def demo(ctx, out, device, quick, seed, quiet, overrides):
    """Build, train (DVAE, grain, content) and sample D²iT on synthetic data; report in OUT/index.html."""
    start = time.perf_counter()
    outputs.claim_and_hold(out, "demo")
    index = run_demo(ctx.find_root().command, out, device=device, quick=quick, seed=seed, quiet=quiet,
                     overrides=overrides)
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s; open {index}")
