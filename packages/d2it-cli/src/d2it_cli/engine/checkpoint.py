"""Training checkpoints: RUN_DIR/checkpoints/step-XXXXXXX/ written atomically, with a `latest` pointer written last.

A checkpoint directory holds one `<part>.safetensors` per trained module (string metadata only),
`state.pt` (optimizers, EMA, step, data position in samples, global batch; rank 0) and `rng-RRRRR.pt` per rank, all read
with `torch.load(weights_only=True)`. It is assembled under a hidden temporary name and renamed
into place only when every file is complete, so an interrupted write leaves the previous
checkpoint (and the pointer to it) intact.
"""

import errno
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from d2it import checks, io
from d2it.errors import CheckpointError, ConfigError
from d2it_cli.engine import dist

CKPT_DIR = "checkpoints"
LATEST = "latest"
STATE = "state.pt"
STEP_RE = re.compile(r"^step-(\d{7,})$")
# write failures a user can fix (space, quota, read-only, permissions): one sentence, the last checkpoint intact
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def step_name(step: int) -> str:
    """Directory name of the checkpoint at `step`."""
    return f"step-{step:07d}"


def rng_file(rank: int) -> str:
    """File name of one rank's RNG state."""
    return f"rng-{rank:05d}.pt"


def capture_rng() -> dict:
    """This process's RNG states (torch CPU and CUDA, numpy, python) as weights-only-loadable data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [int(py_state[0]), [int(x) for x in py_state[1]], py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict):
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir) -> Path:
    """RUN_DIR/checkpoints."""
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path) in step order; temporary directories are ignored."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `latest` points at, or the newest complete one if the pointer is missing or stale."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if not STEP_RE.match(name):  # never follow a pointer out of the run's checkpoints folder
            raise CheckpointError(f"{pointer} names {name[:80]!r}, which is not a checkpoint of this run (step-N)")
        target = root / name
        if (target / STATE).is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str, run_dir) -> Path:
    """`--resume` value (`latest`, a checkpoint directory or a run directory) -> checkpoint directory."""
    if resume == "latest":
        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(f"--resume latest found no checkpoint under {checkpoint_root(run_dir)}")
        return path
    path = Path(resume)
    if (path / STATE).is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is not None:
            return found
    raise CheckpointError(f"{resume} is not a training checkpoint (no {STATE} in it or under its checkpoints/)")


def clean_temporaries(run_dir):
    """Remove half-written checkpoints and hidden temporary files left by an interrupted run (rank 0)."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    for folder in (Path(run_dir), root):
        io.clean_temporary_files(folder)


def save_checkpoint(run_dir, step: int, weights: dict, state: dict, keep: int | None = None) -> Path:
    """Write checkpoint `step` on every rank (collective); a failed write (full disk, read-only, no permission)
    leaves the previous checkpoint in place and says so."""
    try:
        return _save_checkpoint(run_dir, step, weights, state, keep)
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        shutil.rmtree(checkpoint_root(run_dir) / f".{step_name(step)}.tmp", ignore_errors=True)
        try:
            previous = latest_checkpoint(run_dir)
        except CheckpointError:
            previous = None
        where = checkpoint_root(run_dir) / step_name(step)
        text = exc.strerror or (os.strerror(exc.errno) if exc.errno else type(exc).__name__)
        what = {errno.ENOSPC: f"no space left writing {where}", errno.EDQUOT: f"disk quota exceeded writing {where}"}
        problem = what.get(exc.errno, f"cannot write checkpoint {where} ({text[:1].lower()}{text[1:]})")
        intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"{problem}; {intact}, nothing was replaced and the previous files are intact") from None


def _save_checkpoint(run_dir, step: int, weights: dict, state: dict, keep: int | None = None) -> Path:
    root = checkpoint_root(run_dir)
    name = step_name(step)
    tmp = root / f".{name}.tmp"
    final = root / name
    if dist.is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    if dist.is_main():
        for part, tensors in weights.items():
            io.save_safetensors(tensors, tmp / f"{part}.safetensors", {"d2it.part": part, "d2it.step": str(step)})
        io.save_state(state, tmp / STATE)
    io.save_state(capture_rng(), tmp / rng_file(dist.rank()))
    dist.barrier()
    if dist.is_main():
        trash = root / f".{name}.old"
        if final.exists():
            os.replace(final, trash)
        os.replace(tmp, final)
        io.atomic_write_text(root / LATEST, name + "\n")
        if trash.exists():
            shutil.rmtree(trash)
        if keep:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def check_state(state, where) -> dict:
    """The training state of a checkpoint, refused when an entry the trainer reads has the wrong type or range."""
    if not isinstance(state, dict):
        raise CheckpointError(f"training state {where} is not a dictionary (a {type(state).__name__})")
    try:
        checks.field(state, "step", f"training state {where}", low=0, integer=True)
        for key in ("world_size", "batch", "grad_accum"):
            checks.field(state, key, f"training state {where}", low=1, integer=True, optional=key == "world_size")
        checks.field(state, "seed", f"training state {where}", low=0, integer=True)
        checks.field(state, "optimizers", f"training state {where}", types=(dict,))
        checks.field(state, "ema", f"training state {where}", types=(dict,), optional=True)
        checks.field(state, "global_batch", f"training state {where}", low=1, integer=True, optional=True)
        checks.field(state, "data", f"training state {where}", types=(dict,), optional=True)
        for key in ("task", "data_source"):
            checks.field(state, key, f"training state {where}", types=(str,), optional=True)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    for name, opt in state["optimizers"].items():
        if (
            not isinstance(opt, dict)
            or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list)
        ):
            raise CheckpointError(f"training state {where} has a damaged state for optimizer {name!r}")
    return state


def load_checkpoint(path, need_rng: bool = True) -> tuple[dict, dict, dict | None]:
    """(weights {part: tensors}, state, this rank's RNG state) of a checkpoint directory.

    Without `need_rng`, a rank the checkpoint has no RNG state for (another world size) gets None.
    """
    path = Path(path)
    state = check_state(io.load_state(path / STATE), path / STATE)
    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights[f.stem], _ = io.load_safetensors(f)
    rng_path = path / rng_file(dist.rank())
    if not rng_path.is_file():
        if not need_rng:
            return weights, state, None
        raise CheckpointError(
            f"checkpoint {path} has no RNG state for rank {dist.rank()}: it was written by "
            f"{state.get('world_size', '?')} processes and this run has {dist.world_size()}"
        )
    return weights, state, io.load_state(rng_path)
