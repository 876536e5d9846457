"""The training loop shared by `d2it train dvae|grain|content`: build -> train -> close.

One code path for a single process (CPU or one GPU) and for `torchrun` (DDP: the task's main
module is wrapped in DistributedDataParallel, auxiliary modules such as the discriminator have
their gradients averaged by hand). Every random choice is reproducible: the data order comes
from (seed, epoch), each item's augmentation from its own seed, the tasks' per-sample draws
(timesteps, noise, posterior draws, label dropout, masks) from (seed, step, offset in the global
batch) through `trainer.draws`, and the RNG states are part of the checkpoint, so a resumed run
repeats the losses of an uninterrupted one exactly, and one resumed on another number of ranks
is the same run up to floating-point reduction order (also when the ranks cannot share the
global batch evenly: `split.BatchSplit` weights each micro-batch by its samples).

Everything a resume needs is a stateful piece handed to one `Checkpointer`; the Trainer seeds,
picks the device and joins the process group before the task builds its modules (`Task.build`).
"""

import json
import math
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import attrs
import torch
from torch import nn

from d2it import dist, io
from d2it.errors import ConfigError
from d2it.system import eval_mode
from d2it_cli import outputs
from d2it_cli.data import data_provenance
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine import fastpaths, rundir
from d2it_cli.engine.checkpoint import Checkpointer, TrainState, seed_everything
from d2it_cli.engine.config import NAN_POLICIES, PRECISIONS, TrainConfig, signal_numbers  # noqa: F401 - re-exported
from d2it_cli.engine.draws import SampleDraws
from d2it_cli.engine.ema import EMA
from d2it_cli.engine.feed import Feed
from d2it_cli.engine.guard import DivergenceGuard, TrainingDiverged  # noqa: F401 - re-exported
from d2it_cli.engine.metrics import LOG_FILE, MetricLogger, read_log, trim_log  # noqa: F401 - re-exported
from d2it_cli.engine.preempt import Preempted, Preemption
from d2it_cli.engine.schedule import WarmupSchedule
from d2it_cli.engine.split import plan_split
from d2it_cli.engine.task import Task, to_device
from d2it_cli.trackers import open_trackers

CONFIG_FILE = "train.json"
PREVIEW_DIR = "samples"  # preview grids, one per --sample-every steps


class Trainer:
    """Runs a Task: devices, DDP, precision, accumulation, EMA, logs, previews, checkpoints, resume, preemption."""

    def __init__(self, task: Task, config: TrainConfig):
        config.validate()
        rundir.check_new_run(config.run_dir, resume=config.resume, overwrite=config.overwrite)  # one run per folder
        self.task, self.run_dir = task, config.run_dir
        self.device = dist.init_distributed(config.device)
        if self.device.type == "cuda":
            fastpaths.configure_tf32(config.tf32)
        self.precision = fastpaths.resolve_precision(self.device, config.precision)
        self.resume_path, resume_state = None, None
        if config.resume:
            self.resume_path, resume_state = ckpt.read_resume(config.resume, self.run_dir, config.seed)
        before = ckpt.global_batch_of(resume_state) if resume_state else None
        self.split, self.lr_change, notes = plan_split(config, dist.world_size(), before)
        for note in notes if dist.is_main() else ():  # said even with --quiet: the options alone do not tell it
            print(note, flush=True)
        self.config = attrs.evolve(
            config, batch=self.split.max_batch, grad_accum=self.split.accum, global_batch=self.split.global_batch
        )
        seed_everything(config.seed)  # the modules are built alike on every rank
        task.build(self)
        seed_everything(config.seed, dist.rank())  # each rank's own stream for what is not keyed by sample
        modules = task.modules()
        if not modules:
            raise ConfigError(f"{task.name} has nothing to train")
        self.main_name = next(iter(modules))
        self.wrapped = self._wrap(modules)
        self.optimizers = task.make_optimizers(self)
        self.ema = {name: EMA(modules[name], config.ema_decay) for name in task.ema_names()} if config.ema else {}
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.scaler.scale(torch.ones((), device=self.device))  # creates its scale on the device (a no-op off fp16)
        pin = self.device.type == "cuda"
        signals = signal_numbers(config.preempt_signals)
        self.feed = Feed(
            task.dataset, split=self.split, seed=config.seed, rank=dist.rank(), workers=config.workers, pin=pin,
            collate_fn=task.collate_fn, signals=signals,
        )  # fmt: skip
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.feed.require_epochs("--epochs")))
        in_epochs = str(config.warmup).strip().lower().endswith("ep")
        per_epoch = self.feed.require_epochs("--warmup in epochs") if in_epochs else 1
        self.schedule = WarmupSchedule(self.optimizers, config.warmup, per_epoch)
        self.draws = SampleDraws(config.seed, self.global_batch, self.device)
        self.state = TrainState(task.name, config.seed, self.split, config.data_source)
        self.checkpointer = Checkpointer(
            self.run_dir, keep=config.keep, train_state=self.state, feed=self.feed, modules=modules,
            optimizers=self.optimizers, ema=self.ema, schedule=self.schedule, scaler=self.scaler,
        )  # fmt: skip
        self.guard = DivergenceGuard(self.run_dir, self.device, config.nan_policy)
        self.preemption = Preemption(signals)
        self.metrics: MetricLogger | None = None  # opened by `fit`, on rank 0 with the log file and trackers
        self._output: outputs.Output | None = None

    def _wrap(self, modules: dict) -> dict[str, nn.Module]:
        """Modules on the device in train mode; the main one DDP-wrapped (and compiled), the others broadcast."""
        cfg = self.config
        for m in modules.values():
            m.to(self.device).train()
            if cfg.channels_last:
                fastpaths.to_channels_last(m)
        if cfg.grad_checkpointing and not fastpaths.set_grad_checkpointing(modules[self.main_name]):
            raise ConfigError(f"--grad-checkpointing: the {self.task.name} model does not support it")
        self.task.prepare(self)
        wrapped = {}
        for name, m in modules.items():
            if name != self.main_name:
                dist.broadcast_module(m)
                wrapped[name] = m
                continue
            target = self.task.ddp_target(name, m)
            if dist.is_distributed():
                ids = [self.device.index] if self.device.type == "cuda" else None
                find_unused = self.task.find_unused_parameters
                target = nn.parallel.DistributedDataParallel(target, device_ids=ids, find_unused_parameters=find_unused)
            wrapped[name] = fastpaths.maybe_compile(target, cfg.compile)
        return wrapped

    # -- helpers for tasks -------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.state.step

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.split.global_batch

    def autocast(self):
        """The forward-pass precision context (bf16 / fp16 autocast or nothing)."""
        return fastpaths.autocast(self.device, self.precision)

    def focus(self, micro: int):
        """Point `draws` at this rank's micro-batch `micro` of the current step."""
        self.draws.focus(self.step, self.split.offset(micro, dist.rank()))

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

    def final_weights(self, name: str) -> dict:
        """Weights of module `name` to export: the EMA copy when there is one."""
        module = self.task.modules()[name]
        return self.ema[name].weights(module) if name in self.ema else module.state_dict()

    # -- train ---------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train to the configured length in the claimed run directory (rank 0 holds its lock); returns the log."""
        policy = dict(mode="append", legacy=outputs.run_files, what="run directory")
        with outputs.claimed(self.run_dir, "train", **policy) as self._output:  # only our files are written
            if self.config.overwrite:
                rundir.start_over(self._output)  # nothing of the earlier run stays to mix with this one
            try:
                with self.preemption:  # from the start: a signal while resuming stops after the first step
                    self._start()
                    self._train()
            finally:
                if self.metrics is not None:
                    self.metrics.close()
                self._output = None
        self.guard.check_weights(self.task.modules(), self.ema, self.step)
        if dist.is_main() and self.config.save_to_system:  # the system directory is written only when asked
            self.task.finish(self)
        dist.barrier()
        return self.metrics.history

    def _start(self):
        """Resume, write train.json and open the log, trackers and progress output (rank 0)."""
        if dist.is_main():
            self._output.path(ckpt.CKPT_DIR, folder=True)  # the checkpointer's own subfolder
            ckpt.clean_temporaries(self.run_dir)
        dist.barrier()
        if self.resume_path is not None:
            self.checkpointer.load(self.resume_path, self.device)
            self.schedule.batch_factor *= self.lr_change
        if dist.is_main():
            self._write_config()
            if self.resume_path is not None:
                trim_log(self._output.path(LOG_FILE), self.step)
        self.metrics = MetricLogger(
            self.task.name, total_steps=self.total_steps, start_step=self.step, log_every=self.config.log_every,
            quiet=self.config.quiet, log_file=self._output.append(LOG_FILE) if dist.is_main() else None,
            trackers=self._open_trackers() if dist.is_main() else (),
        )  # fmt: skip
        self.guard.start(self.task.modules(), self.ema)

    def _train(self):
        """One optimizer step after another: forward/backward, step, EMA, log, preview, checkpoint, preemption."""
        batches = self.feed.batches()
        try:
            while self.step < self.total_steps:
                warmup = self.schedule.apply(self.step)
                values = self._forward_backward(batches)
                if self._optimizer_step(values):
                    for name, ema in self.ema.items():
                        ema.update(self.task.modules()[name])
                self.state.step += 1
                self._log(warmup)
                if self.config.sample_every and self.step % self.config.sample_every == 0:
                    self.metrics.image("preview", self.write_preview(), self.step)
                every = self.config.ckpt_every
                saved = (every and self.step % every == 0) or self.step == self.total_steps
                if saved:
                    self.save_checkpoint()
                if self.step < self.total_steps and self.preemption.requested(self.device):
                    self._stop(already_saved=saved)
        finally:
            batches.close()  # stops the data-loader workers now rather than at garbage collection

    def _forward_backward(self, batches) -> dict:
        """Forward and backward of this rank's micro-batches (DDP syncs on the last); their weighted log values."""
        main, rank, accum = self.wrapped[self.main_name], dist.rank(), self.split.accum
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        ahead = [to_device(next(batches), self.device) for _ in range(accum)] if self.task.whole_step else None
        if ahead:
            self.task.prepare_step(self, ahead)
        values: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = ahead[micro] if ahead else to_device(next(batches), self.device)
            self.focus(micro)
            weight = self.split.weight(micro, rank)  # 1 / grad_accum when the ranks share the global batch evenly
            skip_sync = dist.is_distributed() and micro < accum - 1 and hasattr(main, "no_sync")
            with main.no_sync() if skip_sync else nullcontext():
                logs = self.task.micro_step(self, batch, self.step, weight * self.scaler.get_scale())
            for k, v in logs.items():
                values[k] = values.get(k, 0) + torch.as_tensor(v, dtype=torch.float64).detach().to(self.device) * weight
        return values

    def _optimizer_step(self, values: dict) -> bool:
        """Average the auxiliary modules' gradients, clip, guard against a non-finite loss, and step.

        Returns False when `--nan-policy skip-step` skipped this step.
        """
        aux = [m for name, m in self.task.modules().items() if name != self.main_name]
        for m in aux:
            dist.average_gradients(m)
        for opt in self.optimizers.values():
            self.scaler.unscale_(opt)  # fp16: true gradients before clipping (a no-op otherwise)
        if self.config.max_grad_norm:
            for name, opt in self.optimizers.items():
                params = [p for g in opt.param_groups for p in g["params"]]
                norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
                values[f"grad_norm_{name}"] = norm.detach().double()
        # fp16 overflows are the scaler's to skip; the guard watches the losses
        watched = [v for k, v in values.items() if not (self.scaler.is_enabled() and k.startswith("grad_norm_"))]
        skip = self.guard.check_step(watched, self.step)
        self.metrics.add({"skipped_steps": 1.0} if skip else values)
        if not skip:
            for opt in self.optimizers.values():
                self.scaler.step(opt)
        self.scaler.update()
        for m in aux:  # e.g. batch-norm statistics: rank 0's, as DDP does for the main module
            dist.broadcast_buffers(m)
        return not skip

    def _log(self, warmup: float):
        """Count the step; at log intervals check for divergence and report the averaged values."""
        self.metrics.count(self.global_batch * self.task.images_per_item)
        if not self.metrics.due(self.step):
            return
        self.guard.raise_if_diverged()
        lr = max(g["lr"] for o in self.optimizers.values() for g in o.param_groups)
        self.metrics.write(self.step, {"epoch": self.feed.epoch, "lr": lr, "lr_factor": warmup})

    def _stop(self, already_saved: bool):
        """Every rank agreed to stop after this step: checkpoint it (unless just done) and raise `Preempted`."""
        path = ckpt.checkpoint_root(self.run_dir) / ckpt.step_name(self.step)
        if not already_saved:
            path = self.save_checkpoint()
        raise Preempted(
            f"{self.preemption.name()} at step {self.step} of {self.total_steps}: wrote checkpoint {path}; "
            "continue with --resume latest",
            self.step,
            path,
        )

    # -- writing -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (all ranks), never from non-finite weights."""
        self.guard.check_weights(self.task.modules(), self.ema, self.step)
        return self.checkpointer.save(self.step)

    def write_preview(self) -> Path | None:
        """Write the task's preview for the current step (rank 0 only); its path on rank 0."""
        self.guard.raise_if_diverged()
        path = None
        if dist.is_main():
            path = self._output.path(f"{PREVIEW_DIR}/{ckpt.step_name(self.step)}.png")
            with self.evaluating():
                self.task.write_preview(self, self.step, path)
        dist.barrier()
        return path

    def _write_config(self):
        doc = {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(self.config).items()}
        doc.update(
            task=self.task.name,
            system=str(getattr(self.task, "system_dir", "") or ""),  # what `d2it export` builds on
            world_size=dist.world_size(),
            precision=self.precision,
            total_steps=self.total_steps,
            warmup_steps=self.schedule.warmup_steps,
            global_batch=self.global_batch,
            lr=self.schedule.base_lrs(),
        )
        provenance = data_provenance(getattr(self.task, "dataset", None))  # name, version, licence, ... if it says
        if provenance:
            doc["data_provenance"] = provenance
        io.atomic_write_text(self._output.path(CONFIG_FILE), json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def _open_trackers(self) -> list:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(self.config).items()}
        settings.update(task=self.task.name, world_size=dist.world_size(), global_batch=self.global_batch)
        return open_trackers(self.config.report_to, run_dir=self.run_dir, name=self.task.name, settings=settings)
