"""Class labels: the one check of class indices given to a grain predictor or the generation pipeline."""

import torch

from d2it.errors import ConfigError


def check_classes(classes, num_classes: int, *, null: bool = False) -> torch.Tensor:
    """Class indices as a (B,) int64 tensor (on their device), or ConfigError naming the bad one.

    classes: a 1-d sequence or tensor of ints in 0..num_classes-1; with `null`, num_classes (the
    null class of classifier-free guidance) is allowed too.
    """
    try:
        tensor = torch.as_tensor(classes)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"classes must be a sequence of ints, got {classes!r}") from None
    if tensor.ndim == 0:
        tensor = tensor.reshape(1)
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ConfigError(f"classes must be a 1-d sequence of ints, got shape {tuple(tensor.shape)} of {tensor.dtype}")
    top = num_classes if null else num_classes - 1
    bad = tensor[(tensor < 0) | (tensor > top)]
    if bad.numel():
        null_note = f" and the null class {num_classes}" if null else ""
        raise ConfigError(
            f"class {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}{null_note}"
        )
    return tensor.long()
