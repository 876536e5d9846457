"""The engine's options: `TrainConfig`, their checks, and the shared options every `d2it train` command takes."""

import math
import os
import signal
from pathlib import Path

import attrs

from d2it.errors import ConfigError
from d2it_cli.engine.fastpaths import PRECISIONS
from d2it_cli.engine.feed import default_workers
from d2it_cli.trackers import check_trackers

NAN_POLICIES = ("stop", "skip-step")
LR_SCALES = ("none", "linear", "sqrt")  # how the learning rate follows a changed global batch
PREEMPT_ENV = "D2IT_PREEMPT_SIGNALS"  # e.g. "TERM,USR1" or "none": the default of --preempt-signal
DEFAULT_PREEMPT = ("TERM", "USR1")


def default_preempt_signals() -> tuple[str, ...]:
    """The signals that checkpoint and stop a run: $D2IT_PREEMPT_SIGNALS, else SIGTERM and SIGUSR1."""
    text = os.environ.get(PREEMPT_ENV)
    return DEFAULT_PREEMPT if text is None else tuple(s for s in text.replace(",", " ").split())


def signal_numbers(names) -> tuple[signal.Signals, ...]:
    """`TERM`, `SIGUSR1`, `usr2` ... as signals; `none` alone means none."""
    names = [str(n).strip().upper() for n in names if str(n).strip()]
    if names == ["NONE"]:
        return ()
    out = []
    for name in names:
        full = name if name.startswith("SIG") else f"SIG{name}"
        if full not in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP") or not hasattr(signal, full):
            raise ConfigError(f"--preempt-signal must name TERM, USR1, USR2, INT, HUP or CONT (or none), got {name!r}")
        out.append(signal.Signals[full])
    return tuple(dict.fromkeys(out))


@attrs.define
class TrainConfig:
    """Engine options (per-rank `batch`; global batch = batch x grad_accum x world size, or `global_batch`)."""

    run_dir: Path = attrs.field(converter=Path)
    batch: int = 8
    grad_accum: int = 1
    global_batch: int | None = None  # samples per step over all ranks (`batch` is then the largest micro-batch)
    lr_scale: str = "none"
    steps: int | None = None
    epochs: float | None = None
    workers: int = 0
    precision: str = "auto"
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0
    ckpt_every: int = 1000
    keep: int | None = None
    warmup: str = "0"
    ema: bool = False
    ema_decay: float = 0.9999
    resume: str | None = None
    quiet: bool = False
    device: str | None = None
    max_grad_norm: float | None = None
    compile: bool = False
    grad_checkpointing: bool = False
    tf32: bool = True
    channels_last: bool = False
    report_to: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    nan_policy: str = "stop"
    preempt_signals: tuple[str, ...] = attrs.field(factory=default_preempt_signals, converter=tuple)
    data_source: str | None = None  # what the run trains on (--data, or the cache), checked on resume
    save_to_system: bool = False  # write the trained part into the system at the end (`Task.finish`)
    overwrite: bool = False  # delete the run already in run_dir and start over (else a new run there is refused)
    options: dict | None = None  # the command's options, in train.json for `d2it train --config RUN_DIR/train.json`

    def validate(self):
        """Raise ConfigError for impossible settings."""
        if self.batch < 1 or self.grad_accum < 1:
            raise ConfigError("--batch and --grad-accum must be at least 1")
        if self.global_batch is not None and self.global_batch < 1:
            raise ConfigError(f"--global-batch must be at least 1, got {self.global_batch}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(f"--lr-scale must be one of {', '.join(LR_SCALES)}, got {self.lr_scale!r}")
        if self.steps is None and self.epochs is None:
            raise ConfigError("give --steps or --epochs")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.log_every < 1:
            raise ConfigError("--log-every must be at least 1")
        if self.keep is not None and self.keep < 1:
            raise ConfigError(f"--keep must be at least 1, got {self.keep}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"--max-grad-norm must be a finite number > 0, got {self.max_grad_norm}")
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {self.nan_policy!r}")
        parse_warmup(self.warmup, 1)
        signal_numbers(self.preempt_signals)
        check_trackers(self.report_to)


def parse_warmup(text, steps_per_epoch: int) -> int:
    """Warm-up length in optimizer steps from `N` (steps) or `Xep` (epochs)."""
    raw = str(text).strip().lower()
    try:
        if raw.endswith("ep"):
            return int(round(float(raw[:-2]) * steps_per_epoch))
        value = float(raw)
    except ValueError:
        raise ConfigError(f"--warmup expects a step count or epochs like '0.5ep', got {text!r}") from None
    if value < 0:
        raise ConfigError(f"--warmup must not be negative, got {text!r}")
    return int(value)


def normal_data(spec: str) -> str:
    """A --data value (or cache folder) with its path normalised, so `./x/`, `x` and `/abs/x` name the same data."""
    text = str(spec).strip()
    prefix, sep, rest = text.partition(":")
    if not (sep and prefix.isidentifier() and not os.path.exists(text)):
        prefix, rest = "", text  # a bare path
    prefix = "" if prefix == "folder" else prefix  # `folder:ROOT` is ROOT
    if rest and ("/" in rest or os.path.exists(rest)):
        rest = os.path.realpath(os.path.expanduser(rest)) if os.path.exists(rest) else os.path.normpath(rest)
    return f"{prefix}:{rest}" if prefix else rest


# the TrainConfig fields every `d2it train` command takes as options
ENGINE_KEYS = (
    "batch",
    "grad_accum",
    "global_batch",
    "lr_scale",
    "steps",
    "epochs",
    "warmup",
    "resume",
    "precision",
    "workers",
    "log_every",
    "sample_every",
    "ckpt_every",
    "keep",
    "ema",
    "ema_decay",
    "max_grad_norm",
    "seed",
    "quiet",
    "device",
    "compile",
    "grad_checkpointing",
    "tf32",
    "channels_last",
    "report_to",
    "nan_policy",
    "preempt_signals",
    "save_to_system",
    "overwrite",
)


def train_config(system_dir, trainer: str, kwargs: dict, data: str | None = None) -> TrainConfig:
    """A validated TrainConfig from the shared options (popped from `kwargs`); run directory SYSTEM/runs/<trainer>.

    `data` names what the run trains on (the --data value or the cache folder); resuming with other data is refused.
    """
    run_dir = kwargs.pop("run_dir", None) or Path(system_dir) / "runs" / trainer
    values = {k: kwargs.pop(k) for k in ENGINE_KEYS if k in kwargs}
    if values.get("steps") is not None:
        values["epochs"] = None
    if values.get("workers") is None:
        values["workers"] = default_workers()
    if not values.get("preempt_signals"):  # the option not given: the environment's or the default signals
        values.pop("preempt_signals", None)
    config = TrainConfig(run_dir=run_dir, data_source=data, **values)
    config.validate()  # before anything is loaded or built
    return config
