"""`d2it export`: a system directory from any training checkpoint; `--every` exports (and scores) each in turn."""

import json
import shlex
from pathlib import Path

import click

from d2it.errors import ConfigError
from d2it_cli import outputs
from d2it_cli.engine.checkpoint import step_name
from d2it_cli.export import export_checkpoint, run_system, select_checkpoints

SCORES = "scores.jsonl"


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Training run directory.")
@click.option("--step", default="latest", show_default=True, help="Checkpoint step number, or latest.")
@click.option("--every", is_flag=True, help="Every checkpoint: OUT/step-NNNNNNN per checkpoint, one JSON line each.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="The EMA weights where the run kept them.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="System directory (with --every: parent).")
@click.option("--system", "system_dir", type=click.Path(file_okay=False), help="The run's system (default: recorded).")
@click.option(
    "--score",
    "score_args",
    help='With --every: arguments of `d2it eval sample-and-score` run on each export, e.g. "--ref r.npz --num 10000".',
)
@click.option("--overwrite", is_flag=True, help="Replace existing exports.")
@click.pass_context
def export(ctx, run_dir, step, every, ema, out, system_dir, score_args, overwrite):
    """Write a loadable system directory from a training checkpoint (for d2it sample / eval sample-and-score)."""
    if score_args and not every:
        raise ConfigError("--score goes with --every (score one export with d2it eval sample-and-score)")
    if step != "latest" and not str(step).isdigit():
        raise ConfigError(f"--step expects a step number or latest, got {step!r}")
    system_dir = system_dir or run_system(run_dir)
    chosen = select_checkpoints(run_dir, "all" if every else step)
    if not every:
        (_, path), target = chosen[0], Path(out)
        origin = export_checkpoint(path, target, system_dir=system_dir, ema=ema, overwrite=overwrite)
        click.echo(f"exported step {origin['step']} ({_weights(origin)}) of {run_dir} to {target}")
        return
    with outputs.claimed(out, "export --every", mode="append") as claim:  # earlier exports and scores are kept
        done = _scored(claim.path(SCORES))
        for number, path in chosen:
            if number in done:
                continue
            target = claim.path(step_name(number), folder=True)  # a system directory of its own
            if not (target / "d2it.json").is_file() or overwrite:
                origin = export_checkpoint(path, target, system_dir=system_dir, ema=ema, overwrite=overwrite)
            else:
                origin = json.loads((target / "d2it.json").read_text())["extra"]["exported_from"]
            line = {"step": number, "system": str(target), "weights": origin["weights"]}
            if score_args:
                evaluation = target / "eval"
                args = ["eval", "sample-and-score", "--system", str(target), "--out", str(evaluation), "--json"]
                root = ctx.find_root()
                root.command.main(args + shlex.split(score_args), obj=root.obj, standalone_mode=False)
                line["metrics"] = json.loads((evaluation / "metrics.json").read_text())["metrics"]
            with claim.append(SCORES) as f:
                f.write(json.dumps(line) + "\n")
            click.echo(json.dumps(line))


def _weights(origin: dict) -> str:
    return ", ".join(f"{part}: {kind}" for part, kind in origin["weights"].items())


def _scored(path: Path) -> set[int]:
    """Steps already written to scores.jsonl (so an interrupted --every run continues)."""
    if not path.is_file():
        return set()
    return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}
