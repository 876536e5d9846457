"""Attention backends: `sdpa` (default), `math` (reference), `xformers` (CUDA, fp16/bf16) and `auto`.

Every backend takes q, k, v of shape (B, heads, N, head_dim) and an optional mask (boolean, True =
attend, or additive float) broadcastable to (B, heads, N, M), and returns (B, heads, N, head_dim).
Each backend has a `make_*` factory, registered by reference in `d2it.plugin` (`ATTENTION`).
"""

import importlib.util

import torch
import torch.nn.functional as F

from d2it.counting import counting, record_attention
from d2it.errors import D2itError

HALF = (torch.float16, torch.bfloat16)


def sdpa_attention(q, k, v, mask=None):
    """torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)."""
    if counting():
        return record_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def math_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v written out: the reference the other backends must match."""
    if counting():
        return record_attention(q, k, v, mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1) @ v


def xformers_available() -> bool:
    """True when the xformers package can be imported."""
    return importlib.util.find_spec("xformers") is not None


def xformers_attention(q, k, v, mask=None):
    """xformers memory_efficient_attention; CUDA tensors in fp16/bf16 only."""
    if counting():
        return record_attention(q, k, v, mask)
    if not (q.is_cuda and q.dtype in HALF):
        raise D2itError(
            f"the xformers attention backend needs CUDA tensors in fp16 or bf16, got {q.device.type} "
            f"{str(q.dtype).removeprefix('torch.')}; use attention 'sdpa' or 'auto'"
        )
    import xformers.ops as xops  # an optional extra, imported only where it can run

    bias = mask
    if mask is not None and not isinstance(mask, torch.Tensor):
        bias = mask  # an xformers AttentionBias (e.g. BlockDiagonalMask) passes through
    elif mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).to(q.dtype)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


def auto_attention(q, k, v, mask=None):
    """xformers on CUDA with fp16/bf16 when installed, otherwise sdpa."""
    if q.is_cuda and q.dtype in HALF and _XFORMERS:
        return xformers_attention(q, k, v, mask)
    return sdpa_attention(q, k, v, mask)


_XFORMERS = xformers_available()


def make_auto(config=None):
    """Factory of the `auto` backend."""
    return auto_attention


def make_sdpa(config=None):
    """Factory of the `sdpa` backend."""
    return sdpa_attention


def make_math(config=None):
    """Factory of the `math` backend."""
    return math_attention


def make_xformers(config=None):
    """Factory of the `xformers` backend: refuses clearly where it cannot run."""
    if not torch.cuda.is_available():
        raise D2itError("the xformers attention backend needs a CUDA GPU; on this machine use 'sdpa' (the default)")
    if not _XFORMERS:
        raise D2itError("xformers is not installed; install it with pip install 'd2it-core[xformers]' or use 'sdpa'")
    return xformers_attention
