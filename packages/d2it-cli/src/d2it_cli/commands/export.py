"""`d2it export`: a system directory from any training checkpoint; `--every` exports (and scores) each in turn."""

import json
import shlex
import tempfile
from pathlib import Path

import click

from d2it.errors import ConfigError
from d2it_cli import outputs
from d2it_cli.commands.system_dir import SYSTEM_DIR
from d2it_cli.engine.checkpoint import step_name
from d2it_cli.export import export_checkpoint, run_system, select_checkpoints
from d2it_cli.interop.to_diffusers import PIPELINES

SCORES = "scores.jsonl"


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="Training run directory.")
@click.option("--step", default="latest", show_default=True, help="Checkpoint step number, or latest.")
@click.option("--every", is_flag=True, help="Every checkpoint: OUT/step-NNNNNNN per checkpoint, one JSON line each.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="The EMA weights where the run kept them.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="System directory (with --every: parent).")
@click.option(
    "--system",
    "system_dir",
    type=SYSTEM_DIR,
    help="The run's system (default: recorded); with --format diffusers and no --run, the system to export.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["d2it", "diffusers"]),
    default="d2it",
    show_default=True,
    help="d2it: a system directory; diffusers: a folder DiffusionPipeline.from_pretrained loads.",
)
@click.option(
    "--pipeline",
    type=click.Choice(PIPELINES),
    default="auto",
    show_default=True,
    help="With --format diffusers: dit (DiTPipeline, a dit-* system with vae-f8), d2it (a custom pipeline that "
    "runs d2it, for D²iT systems) or auto.",
)
@click.option("--sampler", default=None, help="With --format diffusers: the sampler it uses (default: the system's).")
@click.option("--set", "sets", multiple=True, metavar="sampler.OPTION=VALUE", help="With --sampler: its options.")
@click.option(
    "--score",
    "score_args",
    help='With --every: arguments of `d2it eval sample-and-score` run on each export, e.g. "--ref r.npz --num 10000".',
)
@click.option("--overwrite", is_flag=True, help="Replace existing exports.")
@click.option("--json", "as_json", is_flag=True, help="With --format diffusers: print a JSON summary.")
@click.pass_context
def export(
    ctx, run_dir, step, every, ema, out, system_dir, fmt, pipeline, sampler, sets, score_args, overwrite, as_json
):
    """Write a loadable system directory from a training checkpoint, or (--format diffusers) a diffusers pipeline."""
    if fmt == "diffusers":
        if every or score_args:
            raise ConfigError(
                "--every and --score write d2it system directories; export one step with --format diffusers"
            )
        summary = _export_diffusers(ctx, run_dir, step, ema, out, system_dir, pipeline, sampler, sets, overwrite)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        click.echo(f"exported {summary['source']} to {out} as a diffusers {summary['pipeline']}")
        for note in summary.get("why_not_dit", []):
            click.echo(f"  not a DiTPipeline: {note}")
        for note in summary["agreement"]:
            click.echo(f"  note: {note}")
        return
    if run_dir is None:
        raise ConfigError("--run is required: d2it export writes a system directory from a run's checkpoint")
    if sampler or sets or pipeline != "auto":
        raise ConfigError("--pipeline, --sampler and --set go with --format diffusers")
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


def _export_diffusers(ctx, run_dir, step, ema, out, system_dir, pipeline, sampler, sets, overwrite) -> dict:
    """--format diffusers: a system (--system), or a run's checkpoint exported to a temporary system first."""
    from d2it_cli.generation import split_sampler_sets
    from d2it_cli.interop.to_diffusers import export_diffusers

    sampler_sets, _ = split_sampler_sets(sets)
    registry = (ctx.obj or {}).get("registry")
    options = dict(pipeline=pipeline, sampler=sampler, sampler_options=sampler_sets, overwrite=overwrite)
    if run_dir is None:
        if system_dir is None:
            raise ConfigError("--format diffusers needs --system DIR (or --run RUN for a checkpoint)")
        summary = export_diffusers(system_dir, out, registry=registry, **options)
        return {**summary, "source": str(system_dir)}
    if step != "latest" and not str(step).isdigit():
        raise ConfigError(f"--step expects a step number or latest, got {step!r}")
    system_dir = system_dir or run_system(run_dir)
    ((_, path),) = select_checkpoints(run_dir, step)
    with tempfile.TemporaryDirectory(prefix="d2it-export-") as tmp:
        origin = export_checkpoint(path, Path(tmp) / "system", system_dir=system_dir, ema=ema)
        extra = {"exported_from": origin, "source": f"{run_dir} step {origin['step']}"}
        summary = export_diffusers(Path(tmp) / "system", out, registry=registry, extra=extra, **options)
    return {**summary, "source": f"step {origin['step']} ({_weights(origin)}) of {run_dir}"}


def _weights(origin: dict) -> str:
    return ", ".join(f"{part}: {kind}" for part, kind in origin["weights"].items())


def _scored(path: Path) -> set[int]:
    """Steps already written to scores.jsonl (so an interrupted --every run continues)."""
    if not path.is_file():
        return set()
    return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}
