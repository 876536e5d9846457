"""Run by torchrun (or alone) in the tests: train the engine's toy task, save this rank's weights and seen samples.

usage: [torchrun ...] torchrun_toy.py OUT_DIR RUN_DIR STEPS [RESUME]
Environment: TOY_SLEEP (seconds per micro-step, to leave time for a signal), TOY_CKPT_EVERY (default 2),
TOY_GLOBAL_BATCH (--global-batch), TOY_WORKERS (data-loader workers, default 0). A run stopped by a signal exits
with the Preempted exit code.
"""

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_engine import ToyTask, config  # noqa: E402

from d2it import dist  # noqa: E402
from d2it_cli.engine import Trainer  # noqa: E402
from d2it_cli.engine.preempt import Preempted  # noqa: E402


class SlowToy(ToyTask):
    """The toy task with its noise keyed by sample, each micro-step taking at least TOY_SLEEP seconds."""

    def micro_step(self, trainer, batch, step, scale):
        time.sleep(float(os.environ.get("TOY_SLEEP", 0)))
        return super().micro_step(trainer, batch, step, scale)


def main(out_dir, run_dir, steps, resume=None):
    torch.set_num_threads(1)
    task = SlowToy(keyed=True)
    task.find_unused_parameters = False  # the toy model's graph is static: plain DDP
    every = int(os.environ.get("TOY_CKPT_EVERY", 2))
    wanted = os.environ.get("TOY_GLOBAL_BATCH")
    settings = dict(steps=int(steps), ckpt_every=every, device="cpu", resume=resume)
    settings["workers"] = int(os.environ.get("TOY_WORKERS", 0))
    trainer = Trainer(task, config(run_dir, global_batch=int(wanted) if wanted else None, **settings))
    try:
        trainer.fit()
    except Preempted as stop:
        print(f"stopped: {stop}", flush=True)
        sys.exit(stop.exit_code)
    result = {
        "model": task.model.state_dict(),
        "seen": task.seen,
        "world": dist.world_size(),
        "rank": dist.rank(),
        "wrapped": type(trainer.wrapped["model"]).__name__,
        "find_unused": getattr(trainer.wrapped["model"], "find_unused_parameters", None),
        "batch": trainer.config.batch,
        "grad_accum": trainer.config.grad_accum,
    }
    torch.save(result, Path(out_dir) / f"rank{dist.rank()}-of-{dist.world_size()}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
