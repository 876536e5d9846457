"""The training engine shared by every `d2it train` command."""

from d2it_cli.engine.checkpoint import (
    Checkpointer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from d2it_cli.engine.ema import EMA
from d2it_cli.engine.loop import Task, TrainConfig, Trainer, read_log
from d2it_cli.engine.preempt import EXIT_PREEMPTED, Preempted

__all__ = [
    "EMA",
    "EXIT_PREEMPTED",
    "Checkpointer",
    "Preempted",
    "Task",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_log",
    "save_checkpoint",
]
