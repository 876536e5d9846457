"""Turn a training checkpoint into a loadable system directory (`d2it export`), e.g. to score FID over training.

The run's system directory (recorded in RUN_DIR/train.json) gives `d2it.json` and every other part;
the checkpoint gives the trained part (`vae`, `grain` or `content`), its EMA copy by default. Every
file is written before any replaces its earlier version, `d2it.json` last, so a folder with a record is
complete; its record's `extra.exported_from` names the run, step and weights. Only the system's own
files are ever replaced: a run directory or a user's file inside the target stays.
"""

import json
import shutil
from pathlib import Path

from d2it import system as systems
from d2it.errors import CheckpointError
from d2it.io import atomic_path, atomic_write_text, save_safetensors, staged_writes
from d2it_cli import outputs
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.loop import CONFIG_FILE

PARTS = ("vae", "grain", "content")  # checkpoint parts that are system parts (not the discriminator ...)


def run_system(run_dir) -> Path:
    """The system directory a run trained: train.json's `system`, else the run's grandparent (SYSTEM/runs/NAME)."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{run_dir} is not a training run directory: it has no {CONFIG_FILE}")
    try:
        doc = json.loads(config.read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSON or UTF-8
        raise CheckpointError(f"{config} is not valid JSON ({exc}); pass the run's system with --system") from None
    recorded = doc.get("system") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(recorded, (str, type(None))):
        raise CheckpointError(f"{config} is not a d2it training record; pass the run's system with --system")
    candidates = [Path(recorded)] if recorded else []
    candidates.append(run_dir.parent.parent)
    for path in candidates:
        if (path / systems.RECORD_FILE).is_file():
            return path
    raise CheckpointError(f"cannot find the system directory of run {run_dir}; pass --system")


def select_checkpoints(run_dir, step="latest") -> list[tuple[int, Path]]:
    """(step, path) of `latest`, one step number, or `all` checkpoints of a run."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"run {run_dir} has no complete checkpoint under {ckpt.checkpoint_root(run_dir)}")
    if step == "all":
        return found
    if step in (None, "latest"):
        path = ckpt.latest_checkpoint(run_dir)
        return [(int(ckpt.STEP_RE.match(path.name).group(1)), path)]
    wanted = [(s, p) for s, p in found if s == int(step)]
    if not wanted:
        steps = ", ".join(str(s) for s, _ in found)
        raise CheckpointError(f"run {run_dir} has no checkpoint at step {step}; it has steps {steps}")
    return wanted


def export_checkpoint(checkpoint, out, *, system_dir, ema: bool = True, overwrite: bool = False) -> dict:
    """Write system directory `out` from `system_dir` with the checkpoint's parts; returns what was exported.

    `out` is claimed as a system directory (`outputs.save_system`'s rule): with `overwrite` only the files
    of the system there are replaced; its runs, evaluations and a user's files stay.
    """
    checkpoint, system_dir = Path(checkpoint), Path(system_dir)
    outputs.system_target(out, overwrite=overwrite)
    if Path(out).resolve() == system_dir.resolve():
        raise CheckpointError(f"--out {out} is the run's own system directory; export somewhere else")
    weights, state, _ = ckpt.load_checkpoint(checkpoint, need_rng=False)
    parts = [p for p in weights if p in PARTS]
    if not parts:
        raise CheckpointError(f"checkpoint {checkpoint} holds none of the system parts {', '.join(PARTS)}")
    _, doc = systems.read_record(system_dir)
    used = {}
    policy = dict(overwrite=overwrite, exists=outputs.SYSTEM_EXISTS, legacy=outputs.system_files)
    # every file is written before any replaces its earlier version, the record last
    with outputs.claimed(out, outputs.SYSTEM, what="system directory", **policy) as claim, staged_writes() as stage:
        for f in sorted(system_dir.glob("*.safetensors")):
            if f.stem not in parts:
                with atomic_path(claim.path(f.name), stage) as tmp:
                    shutil.copy2(f, tmp)
        for part in parts:
            tensors = weights[part]
            shadow = state.get("ema", {}).get(part)
            if ema and shadow is not None:
                tensors = {k: shadow[k].to(v.dtype) for k, v in tensors.items()}
            used[part] = "ema" if ema and shadow is not None else "raw"
            meta = {"d2it.part": part, "d2it.format": str(systems.FORMAT), "d2it.step": str(state["step"])}
            save_safetensors(tensors, claim.path(f"{part}.safetensors"), meta, stage=stage)
        origin = {"checkpoint": str(checkpoint.resolve()), "step": int(state["step"]), "weights": used}
        doc["extra"] = {**doc.get("extra", {}), "exported_from": origin}
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        atomic_write_text(claim.path(systems.RECORD_FILE), text, stage=stage)
    return origin
