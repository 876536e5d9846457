"""What a trainer provides to the engine: the `Task` interface (modules, optimizers, one micro-step)."""

import abc
from pathlib import Path

import torch
from torch import nn


def to_device(batch, device):
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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

    def build(self, trainer):
        """Build the modules and the dataset; the trainer calls it once, seeded alike on every rank."""

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Trained modules by checkpoint name; the first is the main one (DDP-wrapped)."""

    @abc.abstractmethod
    def make_optimizers(self, trainer) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name (their param groups' `lr` is the configured learning rate)."""

    @abc.abstractmethod
    def micro_step(self, trainer, batch, step: int, scale: float) -> dict:
        """Forward and backward of one micro-batch (its mean loss times `scale`); returns detached log values."""

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
        """Save the trained part where it belongs (rank 0, only with `save_to_system`); optional."""
