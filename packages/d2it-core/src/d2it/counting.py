"""Parameter and multiply-accumulate (MAC) counting, with attention counted explicitly.

torch's FlopCounterMode sees matrix products of linear and conv layers but not fused attention on
every device, so attention backends report their own cost here and, while counting, skip the work.
"""

import contextvars
from contextlib import contextmanager

import attrs
import torch
from torch.utils.flop_counter import FlopCounterMode

_attention_macs: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("d2it_attention_macs", default=None)


@attrs.frozen
class Counts:
    """Parameters and GMACs of one module for one input."""

    params: int
    macs: int  # all multiply-accumulates, attention matrix products included
    attention_macs: int  # the QK^T and AV products alone

    @property
    def macs_without_attention(self) -> int:
        """MACs without the attention matrix products."""
        return self.macs - self.attention_macs

    def as_dict(self) -> dict:
        """JSON-ready numbers in the units the paper uses (M params, GMACs)."""
        return {
            "params": self.params,
            "params_m": round(self.params / 1e6, 2),
            "gmacs": round(self.macs / 1e9, 2),
            "gmacs_without_attention": round(self.macs_without_attention / 1e9, 2),
            "attention_gmacs": round(self.attention_macs / 1e9, 2),
        }


def counting() -> bool:
    """True inside `count`: attention backends then record their MACs and return zeros."""
    return _attention_macs.get() is not None


def record_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """Add QK^T + AV MACs for (B, H, N, D) inputs and return a zero output of the right shape."""
    box = _attention_macs.get()
    *batch, n, d = q.shape
    m, dv = k.shape[-2], v.shape[-1]
    heads = 1
    for size in batch:
        heads *= size
    if mask is not None and getattr(mask, "dtype", None) == torch.bool:
        # a boolean mask means only the allowed pairs are computed (sparse / packed attention)
        pairs = int(mask.expand(*batch, n, m).sum())
        box.append(pairs * (d + dv))
    else:
        box.append(heads * n * m * (d + dv))
    return q.new_zeros(*batch, n, dv)


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum({id(p): p.numel() for p in module.parameters()}.values())


@contextmanager
def _recording():
    token = _attention_macs.set([])
    try:
        yield _attention_macs.get()
    finally:
        _attention_macs.reset(token)


def count(module: torch.nn.Module, *args, **kwargs) -> Counts:
    """Count parameters and MACs of one forward call of `module` on the given inputs."""
    with torch.no_grad(), _recording() as attn, FlopCounterMode(display=False) as fc:
        module(*args, **kwargs)
    attention = sum(attn)
    # FLOPs of matrix products are 2 per multiply-accumulate
    return Counts(params=count_params(module), macs=fc.get_total_flops() // 2 + attention, attention_macs=attention)
