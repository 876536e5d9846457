"""Training and sampling fast paths, each an option that computes the same thing within dtype tolerance.

`maybe_compile` (regional torch.compile of the transformer blocks, eager fallback), `autocast` (bf16),
`make_adamw` (fused AdamW on CUDA), `configure_tf32` (TF32 matmuls on CUDA), `to_channels_last`
(NHWC convolutions) and `set_grad_checkpointing` (recompute block activations in backward).
"""

import functools
import warnings
from contextlib import nullcontext

import torch
from torch import nn

from d2it_transformers.regional import compile_blocks

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class CompiledModule(nn.Module):
    """A module run through torch.compile, falling back to eager (with one warning) if compiling fails.

    Parameters and the state dict are the wrapped module's own (keys unprefixed), so checkpoints of a
    compiled model load into an eager one and back.
    """

    def __init__(self, module: nn.Module, **compile_options):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, **compile_options)
        self.failed: str | None = None

    def forward(self, *args, **kwargs):
        """The compiled forward, or the eager one after a compilation failure."""
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 (any backend failure means: run eager)
                self.failed = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                warnings.warn(
                    f"torch.compile failed ({self.failed}); running {type(self.module).__name__} eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state dict."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load into the wrapped module."""
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def maybe_compile(model: nn.Module, enabled: bool, regional: bool = True, **compile_options) -> nn.Module:
    """`model` with torch.compile when `enabled` (eager fallback with one warning on failure), else `model`.

    `regional`: compile each transformer block in place (`d2it_transformers.regional`) and return the
    model itself; models without such blocks, or `regional=False`, get the whole-model `CompiledModule`.
    """
    if not enabled:
        return model
    if regional and compile_blocks(getattr(model, "module", model), **compile_options):  # DDP wraps .module
        return model
    try:
        return CompiledModule(model, **compile_options)
    except Exception as error:  # noqa: BLE001 (e.g. an unsupported platform or Python)
        warnings.warn(f"torch.compile is unavailable ({error}); running eagerly", RuntimeWarning, stacklevel=2)
        return model


def resolve_precision(device, precision: str = "auto") -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere; other values are checked and returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device, precision: str = "auto"):
    """The forward-pass precision context: torch.autocast to bf16 / fp16, or nothing for fp32."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def make_adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, **options) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) when they live on CUDA; foreach elsewhere."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    on_cuda = bool(tensors) and all(p.is_cuda for p in tensors)
    if on_cuda:
        options.setdefault("fused", True)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **options)


def configure_tf32(enabled: bool) -> dict:
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN convolutions; returns the previous settings."""
    previous = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    return previous


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store the module's 4-d weights NHWC and feed its convolutions NHWC inputs (same results)."""
    module = module.to(memory_format=torch.channels_last)
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and not getattr(conv, "_d2it_channels_last", False):
            conv.forward = functools.partial(_channels_last_forward, conv.forward)
            conv._d2it_channels_last = True
    return module


def _channels_last_forward(forward, x, *args, **kwargs):
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return forward(x, *args, **kwargs)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> bool:
    """Turn per-block gradient checkpointing on or off where the model supports it; True if it does."""
    target = getattr(model, "module", model)
    setter = getattr(target, "set_grad_checkpointing", None)
    if setter is None:
        return False
    setter(enabled)
    return True
