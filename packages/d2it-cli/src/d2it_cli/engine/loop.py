"""The training loop shared by `d2it train dvae|grain|content`.

One code path for a single process (CPU or one GPU) and for `torchrun` (DDP: the task's main
module is wrapped in DistributedDataParallel, auxiliary modules such as the discriminator have
their gradients averaged by hand). Every random choice is reproducible: the data order comes
from (seed, epoch), each item's augmentation from its own seed, the tasks' per-sample draws
(timesteps, noise, posterior draws, label dropout, masks) from (seed, step, offset in the global
batch) through `trainer.draws`, and the RNG states are part of the checkpoint, so a resumed run
repeats the losses of an uninterrupted one exactly, and one resumed on another number of ranks
is the same run up to floating-point reduction order.
"""

import abc
import json
import math
import os
import random
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import nn

from d2it import io
from d2it.errors import CheckpointError, ConfigError, D2itError
from d2it.progress import progress_bar
from d2it.system import eval_mode
from d2it_cli import outputs
from d2it_cli.data import data_provenance
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine import dist, progress
from d2it_cli.engine.draws import SampleDraws
from d2it_cli.engine.ema import EMA
from d2it_cli.engine.fastpaths import autocast, configure_tf32, maybe_compile, set_grad_checkpointing, to_channels_last
from d2it_cli.engine.feed import Feed, GlobalOrder, SeededItems, item_seed  # noqa: F401 - re-exported
from d2it_cli.trackers import check_trackers, open_trackers

LOG_FILE = "log.jsonl"
CONFIG_FILE = "train.json"
PREVIEW_DIR = "samples"  # preview grids, one per --sample-every steps
PRECISIONS = ("auto", "fp32", "bf16")
NAN_POLICIES = ("stop", "skip-step")
MAX_SKIPPED = 10  # consecutive skipped steps after which --nan-policy skip-step gives up
NO_STEP = 2**62  # "no non-finite step yet" in the device-side record
# the blow-up guard: weights whose L2 norm (one per trained module and EMA copy) grew more than GROWTH_LIMIT times over
# the weights the run started from (the system's, or the resumed checkpoint's: the last good write; norms below 1
# count as 1) are never written; no optimizer step that trains gets there, an exploding one does
GROWTH_LIMIT = 1e4


@attrs.define
class TrainConfig:
    """Engine options (per-rank micro-batch `batch`; global batch = batch x grad_accum x world size)."""

    run_dir: Path = attrs.field(converter=Path)
    batch: int = 8
    grad_accum: int = 1
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
    data_source: str | None = None  # what the run trains on (--data, or the cache), checked on resume

    def validate(self):
        """Raise ConfigError for impossible settings."""
        if self.batch < 1 or self.grad_accum < 1:
            raise ConfigError("--batch and --grad-accum must be at least 1")
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
        check_trackers(self.report_to)


def seed_everything(seed: int, rank: int = 0):
    """Seed torch, numpy and python for this rank; call it before any module is built (e.g. a discriminator)."""
    base = (int(seed) * 1000 + int(rank)) % 2**64  # seeds may use all 64 bits
    torch.manual_seed(base)
    np.random.seed(base % 2**32)
    random.seed(base)


def derive_batch(global_batch: int, world: int, batch: int, where="the checkpoint") -> tuple[int, int]:
    """(micro-batch, accumulation) giving `global_batch` on `world` ranks, the micro-batch at most `batch`."""
    if global_batch % world:
        raise CheckpointError(f"{where} has global batch {global_batch}, which {world} processes cannot share")
    per_rank = global_batch // world
    micro = max(d for d in range(1, min(batch, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


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


def to_device(batch, device):
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class TrainingDiverged(D2itError):
    """The loss or the weights became non-finite; nothing was written from the diverged state."""


class Task(abc.ABC):
    """What a trainer provides; subclass and fill in `modules`, `make_optimizers` and `micro_step`."""

    name = "task"
    dataset: torch.utils.data.Dataset = None
    collate_fn = None
    images_per_item = 1
    # DDP must look for parameters without gradients only where a step can skip some (a dynamic graph)
    find_unused_parameters = True
    # True: the trainer hands `prepare_step` this rank's micro-batches of each step before their micro-steps
    whole_step = False

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Trained modules by checkpoint name; the first is the main one (DDP-wrapped)."""

    @abc.abstractmethod
    def make_optimizers(self, trainer) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name (their param groups' `lr` is the base learning rate)."""

    @abc.abstractmethod
    def micro_step(self, trainer, batch, step: int, scale: float) -> dict:
        """Forward and backward of one micro-batch (losses multiplied by `scale`); returns detached log values."""

    def prepare_step(self, trainer, batches: list):
        """Look at this rank's micro-batches of a step first (when `whole_step`), e.g. to count what a loss
        divides by over the global batch so that the step's gradient does not depend on how it is split."""

    def prepare(self, trainer):
        """Move helpers that are not trained (frozen networks, losses) to `trainer.device`; optional."""

    def ddp_target(self, name: str, module: nn.Module) -> nn.Module:
        """What DDP wraps for the main module (e.g. a module whose forward computes the loss); default itself."""
        return module

    def ema_names(self) -> list[str]:
        """Modules that get an EMA copy when --ema is on."""
        return [next(iter(self.modules()))]

    def write_preview(self, trainer, step: int, path: Path):
        """Write a preview PNG (rank 0, eval mode, RNG forked); optional."""

    def finish(self, trainer):
        """Save the trained part where it belongs (rank 0); optional."""


class Trainer:
    """Runs a Task: devices, DDP, precision, accumulation, EMA, logging, previews, checkpoints and resume."""

    def __init__(self, task: Task, config: TrainConfig):
        config.validate()
        self.task = task
        self.config = config
        self.device = dist.init_distributed(config.device)
        self.run_dir = config.run_dir
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.step = 0
        self.data_state: dict | None = None  # the data position a resumed run starts from
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: dict[str, EMA] = {}
        self.history: list[dict] = []
        self.draws: SampleDraws | None = None  # per-sample randomness of the current micro-batch (set up in fit)

    # -- helpers for tasks -------------------------------------------------------------------
    def autocast(self):
        """The forward-pass precision context (bf16 autocast or nothing)."""
        return autocast(self.device, self.precision)

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all ranks."""
        return self.config.batch * self.config.grad_accum * dist.world_size()

    def focus(self, micro: int):
        """Point `draws` at this rank's micro-batch `micro` of the current step (offsets (micro*W + rank)*B...)."""
        self.draws.focus(self.step, (micro * dist.world_size() + dist.rank()) * self.config.batch)

    def module(self, name: str) -> nn.Module:
        """The unwrapped module `name`."""
        return self.task.modules()[name]

    @contextmanager
    def evaluating(self):
        """Eval mode, no grad and a forked RNG (so previews never change training randomness)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            stack.enter_context(torch.no_grad())
            for m in self.task.modules().values():
                stack.enter_context(eval_mode(m))
            yield

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self):
        cfg = self.config
        seed_everything(cfg.seed, dist.rank())
        if self.device.type == "cuda":
            configure_tf32(cfg.tf32)
        modules = self.task.modules()
        if not modules:
            raise ConfigError(f"{self.task.name} has nothing to train")
        for m in modules.values():
            m.to(self.device).train()
            if cfg.channels_last:
                to_channels_last(m)
        if cfg.grad_checkpointing and not set_grad_checkpointing(next(iter(modules.values()))):
            raise ConfigError(f"--grad-checkpointing: the {self.task.name} model does not support it")
        self.task.prepare(self)
        self.main_name = next(iter(modules))
        for name, m in modules.items():
            if name != self.main_name:
                dist.broadcast_module(m)
                self.wrapped[name] = m
                continue
            target = self.task.ddp_target(name, m)
            if dist.is_distributed():
                ids = [self.device.index] if self.device.type == "cuda" else None
                target = nn.parallel.DistributedDataParallel(
                    target, device_ids=ids, find_unused_parameters=self.task.find_unused_parameters
                )
            self.wrapped[name] = maybe_compile(target, cfg.compile)
        self.optimizers = self.task.make_optimizers(self)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
        if cfg.ema:
            self.ema = {name: EMA(modules[name], cfg.ema_decay) for name in self.task.ema_names()}
        self.feed = Feed(
            self.task.dataset,
            batch=cfg.batch,
            grad_accum=cfg.grad_accum,
            seed=cfg.seed,
            rank=dist.rank(),
            world=dist.world_size(),
            workers=cfg.workers,
            collate_fn=self.task.collate_fn,
            pin=self.device.type == "cuda",
        )
        if cfg.steps is not None:
            self.total_steps = cfg.steps
        else:
            self.total_steps = max(1, math.ceil(cfg.epochs * self.feed.require_epochs("--epochs")))
        self.draws = SampleDraws(cfg.seed, self.global_batch, self.device)
        warmup_epochs = str(cfg.warmup).strip().lower().endswith("ep")
        per_epoch = self.feed.require_epochs("--warmup in epochs") if warmup_epochs else 1
        self.warmup = parse_warmup(cfg.warmup, per_epoch)

    def _plan_resume(self):
        """Read the checkpoint early: keep its global batch, deriving this run's micro-batch and accumulation."""
        cfg = self.config
        self.resume_path = ckpt.resolve_resume(cfg.resume, self.run_dir)
        state = ckpt.check_state(io.load_state(self.resume_path / ckpt.STATE), self.resume_path / ckpt.STATE)
        if state.get("seed") != cfg.seed:
            raise CheckpointError(
                f"checkpoint {self.resume_path} used --seed {state.get('seed')}; resume with the same value"
            )
        world = dist.world_size()
        wanted = int(state.get("global_batch", state["batch"] * state["grad_accum"] * state["world_size"]))
        if cfg.batch * cfg.grad_accum * world != wanted:
            batch, accum = derive_batch(wanted, world, cfg.batch, f"checkpoint {self.resume_path}")
            if dist.is_main() and not cfg.quiet:
                print(
                    f"resuming a run of global batch {wanted} on {world} process(es): "
                    f"--batch {batch} --grad-accum {accum}",
                    flush=True,
                )
            cfg.batch, cfg.grad_accum = batch, accum
        return state

    def _resume(self):
        path = self.resume_path
        weights, state, rng = ckpt.load_checkpoint(path, need_rng=False)
        task = state.get("task")
        if task is not None and task != self.task.name:
            raise CheckpointError(
                f"checkpoint {path} was written by `d2it train {task}`, not `d2it train {self.task.name}`; "
                "resume it with the trainer that wrote it"
            )
        if task is None:
            foreign = sorted(set(weights) - set(self.task.modules()))
            if foreign:
                raise CheckpointError(
                    f"checkpoint {path} was written by another trainer (it holds weights for {foreign[0]!r}, "
                    f"not for `d2it train {self.task.name}`)"
                )
        source, given = state.get("data_source"), self.config.data_source
        if source is not None and given is not None and normal_data(source) != normal_data(given):
            raise CheckpointError(
                f"checkpoint {path} was trained on {source}, this run is given {given}; "
                "resume with the same data or start a new run directory"
            )
        modules = self.task.modules()
        for name, m in modules.items():
            if name not in weights:
                raise CheckpointError(f"checkpoint {path} has no weights for {name}")
            io.load_into(
                m, {k: v.to(self.device) for k, v in weights[name].items()}, where=f"{path / name}.safetensors"
            )
        for name, opt in self.optimizers.items():
            if name not in state["optimizers"]:
                raise CheckpointError(f"checkpoint {path} has no state for optimizer {name}")
            configured = [(g["base_lr"], g.get("weight_decay")) for g in opt.param_groups]
            try:
                opt.load_state_dict(state["optimizers"][name])
            except ValueError:  # torch: the groups' parameter counts differ
                raise CheckpointError(
                    f"checkpoint {path} trained other parameters with optimizer {name} than this run would (an option "
                    "that adds or removes trained parameters, such as --learn-logvar, differs); resume with the "
                    "options the run started with"
                ) from None
            for group, (lr, decay) in zip(opt.param_groups, configured):  # this run's --lr / --weight-decay win
                group["base_lr"] = lr
                if decay is not None:
                    group["weight_decay"] = decay
        for name, ema in self.ema.items():
            if name in state.get("ema", {}):
                ema.load_state_dict(state["ema"][name])
            else:  # EMA switched on at resume: start from the current weights
                ema.shadow = EMA(modules[name], ema.decay).shadow
        self.step = int(state["step"])
        self.data_state = dict(state["data"])
        if rng is not None and state.get("world_size") == dist.world_size():
            ckpt.restore_rng(rng)
        else:  # another number of ranks: fresh per-rank streams (only draws not keyed by sample use them)
            torch.manual_seed(((self.config.seed * 1000 + dist.rank()) * 1_000_003 + self.step) % 2**64)
            np.random.seed(((self.config.seed * 1000 + dist.rank()) * 1_000_003 + self.step) % 2**32)
        return path

    # -- the loop --------------------------------------------------------------------------------
    def _set_lr(self):
        factor = min(1.0, (self.step + 1) / self.warmup) if self.warmup > 0 else 1.0
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        return factor

    def _state(self, data: dict) -> dict:
        return {
            "step": self.step,
            "data": data,
            "global_batch": self.global_batch,
            "world_size": dist.world_size(),
            "batch": self.config.batch,
            "grad_accum": self.config.grad_accum,
            "seed": self.config.seed,
            "task": self.task.name,
            **({"data_source": self.config.data_source} if self.config.data_source is not None else {}),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": {k: e.state_dict() for k, e in self.ema.items()},
        }

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (all ranks), never from non-finite weights."""
        self.check_finite_weights()
        weights = {k: m.state_dict() for k, m in self.task.modules().items()} if dist.is_main() else {}
        data = self.feed.state()  # on every rank: a stream's position is gathered from all of them
        return ckpt.save_checkpoint(
            self.run_dir, self.step, weights, self._state(data) if dist.is_main() else {}, keep=self.config.keep
        )

    def _trim_log(self):
        """Drop log lines past the resumed step (written by the interrupted run after its last checkpoint)."""
        path = self._output.path(LOG_FILE)
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the interruption
                continue
            if record.get("step", 0) <= self.step:
                kept.append(line)
        io.atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _write_config(self):
        doc = {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(self.config).items()}
        doc.update(
            task=self.task.name,
            system=str(getattr(self.task, "system_dir", "") or ""),  # what `d2it export` builds on
            world_size=dist.world_size(),
            precision=self.precision,
            total_steps=self.total_steps,
            warmup_steps=self.warmup,
            global_batch=self.global_batch,
            lr={k: o.param_groups[0]["base_lr"] for k, o in self.optimizers.items()},
        )
        provenance = data_provenance(getattr(self.task, "dataset", None))  # name, version, licence, ... if it says
        if provenance:
            doc["data_provenance"] = provenance
        io.atomic_write_text(self._output.path(CONFIG_FILE), json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def fit(self) -> list[dict]:
        """Train to the configured length in the claimed run directory (rank 0 holds its lock); returns the log."""
        policy = dict(mode="append", legacy=outputs.run_files, what="run directory")
        try:
            with outputs.claimed(self.run_dir, "train", **policy) as self._output:  # only our files are written
                return self._fit()
        finally:
            self._output = None

    def _fit(self) -> list[dict]:
        """The loop. One optimizer step is `_forward_backward` (accumulated micro-batches), `_optimizer_step`
        (gradient averaging of auxiliary modules, clipping, the finite-loss guard, the step), `_update_ema`,
        then `_log`, `_maybe_preview` and `_maybe_checkpoint`."""
        self._start()
        batches = self.feed.batches(self.data_state)
        try:
            while self.step < self.total_steps:
                lr_factor = self._set_lr()
                step_sums = self._forward_backward(batches)
                if self._optimizer_step(step_sums):
                    self._update_ema()
                self.step += 1
                self._log(lr_factor)
                self._maybe_preview()
                self._maybe_checkpoint()
        finally:
            batches.close()  # stops the data-loader workers now rather than at garbage collection
            self._close()
        self.check_finite_weights()
        if dist.is_main():
            self.task.finish(self)
        dist.barrier()
        return self.history

    def _start(self):
        """Set up modules and optimizers, resume, and open the log, trackers and progress output (rank 0)."""
        cfg = self.config
        if cfg.resume:
            self._plan_resume()
        self._setup()
        if dist.is_main():
            self._output.path(ckpt.CKPT_DIR, folder=True)  # the checkpointer's own subfolder
            ckpt.clean_temporaries(self.run_dir)
        dist.barrier()
        resumed = self._resume() if cfg.resume else None
        if dist.is_main():
            self._write_config()
            if resumed is not None:
                self._trim_log()
        self._log_file = self._output.append(LOG_FILE) if dist.is_main() else None
        self._trackers = self._open_trackers() if dist.is_main() else []
        self._lines = progress.lines_enabled(cfg.quiet)
        self._bar = progress_bar(
            total=self.total_steps,
            initial=self.step,
            desc=f"train {self.task.name}",
            enabled=not cfg.quiet and dist.is_main(),
            dynamic_ncols=True,
        )
        self._sums, self._count, self._images, self._t0 = {}, 0, 0, time.perf_counter()
        # finite-loss guard: a device-side record of the first bad step, read (one host sync) on the CPU every
        # step and on GPUs at log intervals and before anything is written
        self._first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=self.device)
        self._every_step = self.device.type != "cuda" or cfg.nan_policy == "skip-step"
        self._skipped_in_a_row = 0
        self._start_norms = self.weight_norms()

    def _close(self):
        self._bar.close()
        if self._log_file is not None:
            self._log_file.close()
        for tracker in self._trackers:
            tracker.close()

    def _forward_backward(self, batches) -> dict:
        """Forward and backward of `grad_accum` micro-batches (DDP syncs on the last); their mean log values."""
        cfg = self.config
        main = self.wrapped[self.main_name]
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        step_sums: dict[str, torch.Tensor] = {}
        ahead = None
        if self.task.whole_step:
            ahead = [to_device(next(batches), self.device) for _ in range(cfg.grad_accum)]
            self.task.prepare_step(self, ahead)
        for micro in range(cfg.grad_accum):
            batch = ahead[micro] if ahead else to_device(next(batches), self.device)
            self.focus(micro)
            skip_sync = dist.is_distributed() and micro < cfg.grad_accum - 1 and hasattr(main, "no_sync")
            with main.no_sync() if skip_sync else nullcontext():
                logs = self.task.micro_step(self, batch, self.step, 1.0 / cfg.grad_accum)
            for k, v in logs.items():
                v = torch.as_tensor(v, dtype=torch.float64).detach().to(self.device)
                step_sums[k] = step_sums.get(k, 0) + v / cfg.grad_accum
        return step_sums

    def _optimizer_step(self, step_sums: dict) -> bool:
        """Average the auxiliary modules' gradients, clip, guard against a non-finite loss, and step.

        Returns False when `--nan-policy skip-step` skipped this step.
        """
        aux = [m for name, m in self.task.modules().items() if name != self.main_name]
        if dist.is_distributed():
            for m in aux:
                dist.average_gradients(m)
        if self.config.max_grad_norm:
            for name, opt in self.optimizers.items():
                params = [p for g in opt.param_groups for p in g["params"]]
                norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
                step_sums[f"grad_norm_{name}"] = norm.detach().double()
        skip = self._guard(step_sums)
        if skip:
            self._sums["skipped_steps"] = self._sums.get("skipped_steps", 0) + 1.0
        else:
            for k, v in step_sums.items():
                self._sums[k] = self._sums.get(k, 0) + v
            for opt in self.optimizers.values():
                opt.step()
        if dist.is_distributed():
            for m in aux:  # e.g. batch-norm statistics: rank 0's, as DDP does for the main module
                dist.broadcast_buffers(m)
        return not skip

    def _guard(self, step_sums: dict) -> bool:
        """Record (device-side) the first step with a non-finite value; True when this step is to be skipped."""
        finite = self._all_finite(step_sums.values())
        if self.config.nan_policy == "skip-step":
            skip = not dist.all_true(finite)
            self._skipped_in_a_row = self._skipped_in_a_row + 1 if skip else 0
            if self._skipped_in_a_row > MAX_SKIPPED:
                self._first_bad.fill_(self.step + 1 - MAX_SKIPPED)
                self.raise_if_diverged(f"{MAX_SKIPPED} steps in a row were skipped")
            return skip
        seen = finite | (self._first_bad < NO_STEP)
        bad_step = torch.full_like(self._first_bad, self.step + 1)
        self._first_bad = torch.where(seen, self._first_bad, bad_step)
        if self._every_step:
            self.raise_if_diverged()
        return False

    def _update_ema(self):
        for name, ema in self.ema.items():
            ema.update(self.task.modules()[name])

    def _log(self, lr_factor: float):
        """Count the step; every `log_every` steps (and at the end) average the losses over ranks and report them."""
        self._count += 1
        self._images += self.global_batch * self.task.images_per_item
        self._bar.update(1)
        if self.step % self.config.log_every and self.step != self.total_steps:
            return
        self.raise_if_diverged()
        values = dist.all_reduce_mean({k: float(v) / self._count for k, v in self._sums.items()})
        elapsed = time.perf_counter() - self._t0
        record = {
            "step": self.step,
            "epoch": self.feed.epoch,
            **{k: values[k] for k in sorted(values)},
            "lr": max(g["lr"] for o in self.optimizers.values() for g in o.param_groups),
            "lr_factor": lr_factor,
            "images_per_s": self._images / max(elapsed, 1e-9),
            "time": time.time(),
        }
        self.history.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
            scalars = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, float)}
            for tracker in self._trackers:
                tracker.log_scalars(scalars, self.step)
        if self._lines:
            per_step = elapsed / max(self._count, 1)
            progress.print_line(progress.format_line(self.task.name, record, self.total_steps, per_step))
        main_loss = values.get("loss", next(iter(values.values()), float("nan")))
        self._bar.set_postfix(loss=f"{main_loss:.4f}", refresh=False)
        self._sums, self._count, self._images, self._t0 = {}, 0, 0, time.perf_counter()

    def _maybe_preview(self):
        if self.config.sample_every and self.step % self.config.sample_every == 0:
            preview = self.write_preview()
            if preview is not None and preview.is_file():
                for tracker in self._trackers:
                    tracker.log_image("preview", preview, self.step)

    def _maybe_checkpoint(self):
        every = self.config.ckpt_every
        if (every and self.step % every == 0) or self.step == self.total_steps:
            self.save_checkpoint()

    # -- the finite-loss guard -------------------------------------------------------------------
    def _all_finite(self, values) -> torch.Tensor:
        """A device bool: every value is finite (no host sync)."""
        flags = [torch.isfinite(torch.as_tensor(v)).all() for v in values]
        if not flags:
            return torch.ones((), dtype=torch.bool, device=self.device)
        return torch.stack([f.to(self.device) for f in flags]).all()

    def _last_good(self) -> str:
        try:
            last = ckpt.latest_checkpoint(self.run_dir)
        except CheckpointError:
            last = None
        return f"the last good checkpoint is {last}" if last else "no checkpoint had been written"

    def raise_if_diverged(self, why: str = ""):
        """Stop (all ranks) when a step's loss was non-finite, naming the step and the last good checkpoint."""
        first = dist.min_int(self._first_bad)
        if first >= NO_STEP:
            return
        reason = why or f"the loss became non-finite at step {first}"
        raise TrainingDiverged(
            f"training diverged: {reason}; nothing was written from the diverged weights and {self._last_good()} "
            "(resume from it with a lower --lr or a --max-grad-norm, or train with --nan-policy skip-step)"
        )

    def check_finite_weights(self):
        """Refuse to write anything when a loss was non-finite or any weight (or EMA copy) is NaN or infinite."""
        if hasattr(self, "_first_bad"):
            self.raise_if_diverged()
        tensors = [t for m in self.task.modules().values() for t in (*m.parameters(), *m.buffers())]
        tensors += [t for e in self.ema.values() for t in e.shadow.values()]
        floats = [t for t in tensors if t.is_floating_point()]
        if floats and not dist.all_true(self._all_finite(floats)):
            raise TrainingDiverged(
                f"training diverged: the weights hold NaN or infinite values at step {self.step} although the loss "
                f"was finite; nothing was written from them and {self._last_good()} (lower --lr or set --max-grad-norm)"
            )
        self.check_growth()

    def weight_norms(self) -> dict[str, torch.Tensor]:
        """The L2 norm (float64, on the device) of each trained module's and EMA copy's floating-point tensors."""
        groups = {name: [*m.parameters(), *m.buffers()] for name, m in self.task.modules().items()}
        groups.update({f"{name} (EMA)": list(e.shadow.values()) for name, e in self.ema.items()})
        norms = {}
        for name, tensors in groups.items():
            floats = [t.detach() for t in tensors if t.is_floating_point()]
            squares = [torch.linalg.vector_norm(t, dtype=torch.float64) ** 2 for t in floats]
            norms[name] = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), dtype=torch.float64)
        return norms

    def check_growth(self):
        """Refuse to write weights that blew up: a norm more than GROWTH_LIMIT times the run's starting one."""
        start = getattr(self, "_start_norms", None)
        if not start:
            return
        now = self.weight_norms()
        names = [n for n in start if n in now]
        if not names:
            return
        ratio = torch.stack([now[n].to(self.device) / start[n].to(self.device).clamp(min=1.0) for n in names])
        if dist.all_true((ratio <= GROWTH_LIMIT).all()):
            return
        worst = names[int(ratio.argmax())]
        raise TrainingDiverged(
            f"training diverged: the weights of {worst} grew from norm {float(start[worst]):.3g} to "
            f"{float(now[worst]):.3g} by step {self.step} (more than {GROWTH_LIMIT:.0e} times, a blow-up); nothing "
            f"was written from them and {self._last_good()} (lower --lr or set --max-grad-norm)"
        )

    def write_preview(self) -> Path | None:
        """Write the task's preview for the current step (rank 0 only); its path on rank 0."""
        if hasattr(self, "_first_bad"):
            self.raise_if_diverged()
        path = None
        if dist.is_main():
            path = self._output.path(f"{PREVIEW_DIR}/{ckpt.step_name(self.step)}.png")
            with self.evaluating():
                self.task.write_preview(self, self.step, path)
        dist.barrier()
        return path

    def _open_trackers(self) -> list:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(self.config).items()}
        settings.update(task=self.task.name, world_size=dist.world_size(), global_batch=self.global_batch)
        return open_trackers(self.config.report_to, run_dir=self.run_dir, name=self.task.name, settings=settings)

    def final_weights(self, name: str) -> dict:
        """Weights of module `name` to export: the EMA copy when there is one."""
        module = self.task.modules()[name]
        if name in self.ema:
            return self.ema[name].weights(module)
        return module.state_dict()


def read_log(run_dir) -> list[dict]:
    """The JSON-lines training log of a run directory."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
