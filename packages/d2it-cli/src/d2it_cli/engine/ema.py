"""Exponential moving average of a module's weights (DiT's `update_ema`)."""

from contextlib import contextmanager

import torch
from torch import nn


def stale_ema(decay: float, steps: int) -> str | None:
    """A warning when an EMA of `steps` updates still holds over half its starting weights (decay**steps > 0.5)."""
    left = float(decay) ** int(steps)
    if left <= 0.5:
        return None
    return (
        f"the EMA weights written (decay {decay}) still hold {100 * left:.0f}% of the starting weights after "
        f"{steps} steps; for a run this short pass --ema-decay (e.g. {min(0.999, max(0.9, 1 - 5 / max(steps, 1))):.3g})"
    )


class EMA:
    """Float32 shadow copies of a module's floating-point state, updated after every optimizer step."""

    def __init__(self, module: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in module.state_dict().items()
        }

    @torch.no_grad()
    def update(self, module: nn.Module):
        """shadow <- decay * shadow + (1 - decay) * weights (one foreach lerp); integer buffers are copied."""
        shadows, values = [], []
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                shadows.append(s)
                values.append(v.detach().float())
            else:
                s.copy_(v)
        if shadows:  # a few fused kernels for all tensors instead of one launch per tensor
            torch._foreach_lerp_(shadows, values, 1.0 - self.decay)

    def state_dict(self) -> dict:
        """The shadow tensors."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict):
        """Restore shadow tensors saved by `state_dict`."""
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[0]!r}")
        for k, s in self.shadow.items():
            s.copy_(state[k])

    def weights(self, like: nn.Module) -> dict:
        """Shadow tensors cast to the dtypes of `like`'s state dict."""
        ref = like.state_dict()
        return {k: v.to(ref[k].dtype) for k, v in self.shadow.items()}

    @contextmanager
    def applied(self, module: nn.Module):
        """Temporarily load the EMA weights into `module`."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.weights(module))
        try:
            yield module
        finally:
            module.load_state_dict(backup)
