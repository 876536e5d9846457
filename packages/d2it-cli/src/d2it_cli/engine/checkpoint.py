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

import attrs
import numpy as np
import torch

from d2it import checks, dist, io
from d2it.errors import CheckpointError, ConfigError
from d2it_cli.engine.config import normal_data
from d2it_cli.engine.split import BatchSplit

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


def save_checkpoint(run_dir, step: int, weights: dict, state: dict, keep: int | None = None, rng=None) -> Path:
    """Write checkpoint `step` on every rank (collective; `rng`: this rank's RNG state, by default the current one);
    a failed write (full disk, read-only, no permission) leaves the previous checkpoint in place and says so."""
    try:
        return _save_checkpoint(run_dir, step, weights, state, keep, rng)
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


def _save_checkpoint(run_dir, step: int, weights: dict, state: dict, keep: int | None, rng) -> Path:
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
    io.save_state(capture_rng() if rng is None else rng, tmp / rng_file(dist.rank()))
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
        for key in ("schedule", "scaler"):
            checks.field(state, key, f"training state {where}", types=(dict,), optional=True)
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


# -- resuming ----------------------------------------------------------------------------------------------------


def read_resume(resume: str, run_dir, seed: int) -> tuple[Path, dict]:
    """(checkpoint directory, its training state) of `--resume`, refused when it was trained with another seed."""
    path = resolve_resume(resume, run_dir)
    state = check_state(io.load_state(path / STATE), path / STATE)
    if state.get("seed") != seed:
        raise CheckpointError(f"checkpoint {path} used --seed {state.get('seed')}; resume with the same value")
    return path, state


def global_batch_of(state: dict) -> int:
    """The global batch a checkpoint was trained with (older ones: batch x grad_accum x world size)."""
    return int(state.get("global_batch", state["batch"] * state["grad_accum"] * state.get("world_size", 1)))


@attrs.define
class TrainState:
    """The run's step, and the facts a resume checks or keeps: task, seed, data, and the split of the global batch."""

    task: str
    seed: int
    split: BatchSplit
    data_source: str | None = None
    step: int = 0

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "global_batch": self.split.global_batch,
            "world_size": self.split.world,
            "batch": self.split.max_batch,
            "grad_accum": self.split.accum,
            "seed": self.seed,
            "task": self.task,
        }
        return state if self.data_source is None else {**state, "data_source": self.data_source}

    def load_state_dict(self, state: dict):
        """Take the step of a checkpoint written by the same trainer on the same data."""
        task = state.get("task")
        if task is not None and task != self.task:
            raise CheckpointError(
                f"was written by `d2it train {task}`, not `d2it train {self.task}`; "
                "resume it with the trainer that wrote it"
            )
        source, given = state.get("data_source"), self.data_source
        if source is not None and given is not None and normal_data(source) != normal_data(given):
            raise CheckpointError(
                f"was trained on {source}, this run is given {given}; "
                "resume with the same data or start a new run directory"
            )
        self.step = int(state["step"])


class RNGState:
    """This process's random streams (torch CPU and CUDA, numpy, python) as a stateful piece; one file per rank."""

    def state_dict(self) -> dict:
        return capture_rng()

    def load_state_dict(self, state: dict):
        restore_rng(state)


class Checkpointer:
    """Saves and restores everything a resume needs through each piece's `state_dict` / `load_state_dict`.

    `train_state` (step, run facts), `feed` (data position), the task's `modules` (one safetensors file each),
    `optimizers`, `ema`, `schedule` and `scaler` go into one checkpoint directory with each rank's `rng`.
    """

    def __init__(self, run_dir, *, keep, train_state, feed, modules, optimizers, ema, schedule, scaler, rng=None):
        self.run_dir, self.keep = Path(run_dir), keep
        self.train_state, self.feed, self.modules = train_state, feed, modules
        self.optimizers, self.ema, self.schedule, self.scaler = optimizers, ema, schedule, scaler
        self.rng = rng or RNGState()

    def save(self, step: int) -> Path:
        """Write checkpoint `step` (every rank: the data position and the RNG are per rank)."""
        data = self.feed.state_dict()  # on every rank: a stream's position is gathered from all of them
        weights, state = {}, {}
        if dist.is_main():
            weights = {k: m.state_dict() for k, m in self.modules.items()}
            state = {
                **self.train_state.state_dict(),
                "data": data,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "ema": {k: e.state_dict() for k, e in self.ema.items()},
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
        return save_checkpoint(self.run_dir, step, weights, state, keep=self.keep, rng=self.rng.state_dict())

    def load(self, path: Path, device):
        """Restore every piece from checkpoint `path` (the RNG only when it was written by as many ranks)."""
        weights, state, rng = load_checkpoint(path, need_rng=False)
        if state.get("task") is None:  # written before checkpoints named their trainer: judge by the weights
            foreign = sorted(set(weights) - set(self.modules))
            if foreign:
                raise CheckpointError(
                    f"checkpoint {path} was written by another trainer (it holds weights for {foreign[0]!r}, "
                    f"not for `d2it train {self.train_state.task}`)"
                )
        try:
            self.train_state.load_state_dict(state)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path} {exc}") from None
        for name, module in self.modules.items():
            if name not in weights:
                raise CheckpointError(f"checkpoint {path} has no weights for {name}")
            tensors = {k: v.to(device) for k, v in weights[name].items()}
            io.load_into(module, tensors, where=f"{path / name}.safetensors")
        for name, opt in self.optimizers.items():
            _load_optimizer(opt, state["optimizers"].get(name), name, path)
        for name, ema in self.ema.items():
            if name in state.get("ema", {}):
                ema.load_state_dict(state["ema"][name])
            else:  # EMA switched on at resume: start from the resumed weights
                ema.load_state_dict(self.modules[name].state_dict())
        self.schedule.load_state_dict(state.get("schedule", {}))
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.feed.load_state_dict(state["data"])
        if rng is not None and state.get("world_size") == dist.world_size():
            self.rng.load_state_dict(rng)
        else:  # another number of ranks: fresh per-rank streams (only draws not keyed by sample use them)
            seed_everything(self.train_state.seed, dist.rank(), self.train_state.step)


def _load_optimizer(opt, saved, name: str, path):
    """Load an optimizer's state; this run's weight decay wins (its learning rates are the schedule's)."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} has no state for optimizer {name}")
    decays = [g.get("weight_decay") for g in opt.param_groups]
    try:
        opt.load_state_dict(saved)
    except ValueError:  # torch: the groups' parameter counts differ
        raise CheckpointError(
            f"checkpoint {path} trained other parameters with optimizer {name} than this run would (an option "
            "that adds or removes trained parameters, such as --learn-logvar, differs); resume with the "
            "options the run started with"
        ) from None
    for group, decay in zip(opt.param_groups, decays):
        if decay is not None:
            group["weight_decay"] = decay


def seed_everything(seed: int, rank: int = 0, step: int = 0):
    """Seed torch, numpy and python for (run seed, rank, step) (step 0: the run's start)."""
    base = (int(seed) * 1000 + int(rank)) % 2**64  # seeds may use all 64 bits
    if step:
        base = (base * 1_000_003 + int(step)) % 2**64
    torch.manual_seed(base)
    np.random.seed(base % 2**32)
    random.seed(base)
