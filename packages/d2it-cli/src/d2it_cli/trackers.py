"""Experiment trackers for `--report-to`: registered components (`d2it_trackers` hook) logging scalars and previews.

Each tracker's library is an optional extra (`pip install 'd2it-cli[tensorboard]'`, `'d2it-cli[wandb]'`);
naming one that is not installed is a user error naming the extra. wandb follows its own
environment variables (`WANDB_MODE=offline` for runs without network, `WANDB_PROJECT`, `WANDB_DIR`).
A tracker keeps its run across resumes: TensorBoard appends to the run directory's event folder
(hiding what an interrupted run logged past its checkpoint), wandb reopens the run whose id it
stored in the run directory.
"""

import importlib
import secrets
from pathlib import Path

import attrs
import numpy as np
from PIL import Image

from d2it.errors import ConfigError
from d2it.registry import Registry, default_registry

NONE = "none"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # wandb's own folder under the `dir` it is given
WANDB_ID_FILE = "d2it-run-id"  # RUN_DIR/wandb/d2it-run-id: the wandb run this run directory logs to
TRACKER_FOLDERS = (TENSORBOARD_DIR, WANDB_DIR)  # what the built-in trackers write into a run directory


class Tracker:
    """What the trainer calls on rank 0; subclasses send values somewhere."""

    def log_scalars(self, values: dict[str, float], step: int):
        """Record scalar values at `step`."""

    def log_image(self, tag: str, path: Path, step: int):
        """Record the preview PNG at `path` under `tag`."""

    def close(self):
        """Flush and release files."""


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--report-to {extra} needs the {extra} package; install it with pip install 'd2it-cli[{extra}]'"
        ) from None


@attrs.frozen
class TensorBoardConfig:
    """Options of the `tensorboard` tracker."""

    subdir: str = TENSORBOARD_DIR  # event files go to RUN_DIR/<subdir>
    flush_secs: int = 30


class TensorBoardTracker(Tracker):
    """TensorBoard event files through `torch.utils.tensorboard.SummaryWriter`, one folder per run directory.

    A resumed run adds an event file to the same folder. Its writer opens at the first step it logs, with
    that step as `purge_step`: TensorBoard then hides what the interrupted run logged from that step on
    (past its last checkpoint), so each step shows once.
    """

    def __init__(self, config: TensorBoardConfig, run_dir, name: str):
        _require("tensorboard", "tensorboard")
        self.prefix = name
        self.log_dir = Path(run_dir) / config.subdir
        self.flush_secs = config.flush_secs
        self.writer = None

    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package checked above

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step, flush_secs=self.flush_secs)
        return self.writer

    def log_scalars(self, values, step):
        writer = self._writer(step)
        for k, v in values.items():
            writer.add_scalar(f"{self.prefix}/{k}", v, step)

    def log_image(self, tag, path, step):
        arr = np.asarray(Image.open(path).convert("RGB"))
        self._writer(step).add_image(f"{self.prefix}/{tag}", arr, step, dataformats="HWC")

    def close(self):
        if self.writer is not None:
            self.writer.close()


@attrs.frozen
class WandbConfig:
    """Options of the `wandb` tracker (WANDB_* environment variables still apply)."""

    project: str = "d2it"
    mode: str | None = None  # online / offline / disabled; default: wandb's (WANDB_MODE)


def wandb_run_id(run_dir) -> str:
    """The wandb run id of a run directory: the one stored there, else a new one, stored before wandb starts."""
    path = Path(run_dir) / WANDB_DIR / WANDB_ID_FILE
    if path.is_file() and not path.is_symlink():
        stored = path.read_text(errors="replace").strip()
        if stored.isalnum():
            return stored
    from d2it.io import atomic_write_text  # here: importing this module stays free of torch

    run_id = secrets.token_hex(4)  # wandb's own ids are 8 characters of [0-9a-z] too
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, run_id + "\n")
    return run_id


class WandbTracker(Tracker):
    """A wandb run whose files live under RUN_DIR/wandb (synced later with `wandb sync` when offline).

    Every start in the same run directory (a resume, a requeued job) logs to the same wandb run: its id
    is kept in RUN_DIR/wandb/d2it-run-id and wandb is started with `resume="allow"`.
    """

    def __init__(self, config: WandbConfig, run_dir, name: str, settings: dict):
        self.wandb = _require("wandb", "wandb")
        self.prefix = name
        kwargs = {"mode": config.mode} if config.mode else {}
        run_id = wandb_run_id(run_dir)
        try:
            self.run = self.wandb.init(
                project=config.project,
                dir=str(run_dir),
                name=f"{Path(run_dir).name}-{name}",
                id=run_id,
                resume="allow",
                config=settings,
                reinit="create_new",
                **kwargs,
            )
        except Exception as exc:  # wandb raises its own types (no API key, no network, a bad setting)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            try:  # a failed init leaves wandb's process-wide state behind, which a later run (a notebook) would inherit
                self.wandb.teardown()
            except Exception:  # noqa: BLE001 - cleaning up after a failure must not hide it
                pass
            raise ConfigError(
                f"--report-to wandb could not start a wandb run ({reason.rstrip('.')}); run `wandb login` or set "
                "WANDB_API_KEY, or set WANDB_MODE=offline to log locally and `wandb sync` later"
            ) from None

    def log_scalars(self, values, step):
        self.run.log({f"{self.prefix}/{k}": v for k, v in values.items()}, step=step)

    def log_image(self, tag, path, step):
        self.run.log({f"{self.prefix}/{tag}": self.wandb.Image(str(path))}, step=step)

    def close(self):
        self.run.finish()


def make_tensorboard(config: TensorBoardConfig, *, run_dir, task: str, settings: dict) -> TensorBoardTracker:
    """Registry factory of the `tensorboard` tracker."""
    return TensorBoardTracker(config, run_dir, task)


def make_wandb(config: WandbConfig, *, run_dir, task: str, settings: dict) -> WandbTracker:
    """Registry factory of the `wandb` tracker."""
    return WandbTracker(config, run_dir, task, settings)


def check_trackers(names, registry: Registry | None = None) -> tuple[str, ...]:
    """Validated `--report-to` names (`none` alone means no tracker); unknown names list the valid ones."""
    registry = registry or default_registry()
    names = tuple(dict.fromkeys(n.strip().lower() for n in names if n and n.strip()))
    if NONE in names:
        if len(names) > 1:
            raise ConfigError("--report-to none cannot be combined with a tracker")
        return ()
    for n in names:
        if n not in registry.names("tracker"):
            valid = ", ".join([NONE, *registry.names("tracker")])
            raise ConfigError(f"unknown --report-to {n!r}; valid values: {valid}")
    return names


def open_trackers(names, *, run_dir, name: str, settings: dict, registry: Registry | None = None) -> list[Tracker]:
    """Create the trackers named by `--report-to` (rank 0)."""
    registry = registry or default_registry()
    return [
        registry.create("tracker", n, where=f"tracker {n}", run_dir=run_dir, task=name, settings=settings)
        for n in check_trackers(names, registry)
    ]
