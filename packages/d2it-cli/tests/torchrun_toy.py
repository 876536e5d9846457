"""Run by torchrun in test_cluster.py: train the engine's toy task, save this rank's weights and seen samples.

usage: torchrun ... torchrun_toy.py OUT_DIR RUN_DIR STEPS [RESUME]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_engine import ToyTask, config  # noqa: E402

from d2it_cli.engine import Trainer, dist  # noqa: E402


def main(out_dir, run_dir, steps, resume=None):
    torch.set_num_threads(1)
    task = ToyTask()
    task.find_unused_parameters = False  # the toy model's graph is static: plain DDP
    trainer = Trainer(task, config(run_dir, steps=int(steps), ckpt_every=2, device="cpu", resume=resume))
    trainer.fit()
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
