"""The training engine shared by every `d2it train` command."""

from d2it_cli.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from d2it_cli.engine.ema import EMA
from d2it_cli.engine.loop import Task, TrainConfig, Trainer, read_log

__all__ = [
    "EMA",
    "Task",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_log",
    "save_checkpoint",
]
