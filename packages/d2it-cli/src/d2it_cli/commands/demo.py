"""`d2it demo`: train and sample a tiny D²iT end to end on real emoji (or synthetic data) and write an HTML report."""

import time

import click

from d2it.errors import D2itError
from d2it_cli import outputs
from d2it_cli.commands.params import DEVICE, SEED
from d2it_cli.demo import DATASETS, run_demo


class ClickRunner:
    """Runs `d2it` commands through the click group `cli` in this process (the demo's `Runner`)."""

    def __init__(self, cli: click.Group):
        self.cli = cli

    def run(self, args: list[str]) -> str:
        """Run `d2it ARGS`; "ok", or why it failed (a usage error, or the exit code of a failed command)."""
        try:
            code = self.cli.main(args=args, prog_name="d2it", standalone_mode=False, obj={})
        except click.exceptions.Abort:
            raise
        except click.ClickException as exc:
            return f"failed: {exc.format_message()}"
        except D2itError as exc:  # the step's one-sentence error, as the command line would print it
            click.echo(f"error: {exc}", err=True)
            return f"failed: {exc}"
        return "ok" if code in (None, 0) else f"failed (exit code {code})"

    def accepts(self, path: list[str], option: str) -> bool:
        """True when the subcommand at `path` (e.g. ["train", "content"]) takes `option`."""
        cmd = self.cli
        for name in path:
            # get_command, not .commands: the built-in commands are imported lazily
            cmd = cmd.get_command(click.Context(cmd), name) if isinstance(cmd, click.Group) else None
            if cmd is None:
                return False
        return any(option in p.opts for p in cmd.params)


@click.command()
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output directory (index.html, system, samples, figures).",
)
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda ... (default: CUDA when available).")
@click.option(
    "--data",
    type=click.Choice(DATASETS),
    default=DATASETS[0],
    show_default=True,
    help="openmoji: real emoji, unconditional, scored against a held-out split; synthetic: 4 classes of shapes.",
)
@click.option("--quick", is_flag=True, help="Smaller settings (about three minutes on two CPU cores).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--quiet", is_flag=True, help="No progress bars or step headers.")
@click.option(
    "--plan",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a plan setting, e.g. content_steps=3000 (vae/backbone/grain: ';' between items).",
)
@click.pass_context
def demo(ctx, out, device, data, quick, seed, quiet, overrides):
    """Build, train (DVAE, grain, content) and sample D²iT on emoji or synthetic data; report in OUT/index.html."""
    start = time.perf_counter()
    with outputs.claimed(out, "demo", mode="append"):  # each step claims its own subfolder
        index = run_demo(
            ClickRunner(ctx.find_root().command),
            out,
            device=device,
            quick=quick,
            seed=seed,
            quiet=quiet,
            overrides=overrides,
            data=data,
        )
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s; open {index}")
