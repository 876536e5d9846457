"""Regional compilation: torch.compile of the repeated transformer block, in place, instead of the whole model.

Every DiT block of a model runs the same code, so one compiled graph serves all of them (dynamo reuses
it across block instances), compiling takes seconds rather than minutes, and data-dependent parts
outside the blocks (grain-map routing, the sparse RefineNet's packing) stay eager. Parameters and
state-dict keys are untouched, so checkpoints move freely between compiled and eager models. A block
whose compilation fails runs eagerly from then on, after one warning.
"""

import warnings

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException

from d2it_transformers.dit import DiTBlock


class GuardedCompiled:
    """A compiled callable that falls back to its eager twin (with one warning) if compiling or running it fails.

    Only compiler errors fall back; others (out of memory, checkpointing's recomputation control flow, the
    model's own errors) pass through unchanged.
    """

    def __init__(self, compiled, eager, what: str):
        self.compiled, self.eager, self.what = compiled, eager, what
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        """The compiled call, or the eager one after a failure."""
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except TorchDynamoException as error:  # only compiler failures; the model's own errors pass through
                self.failed = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                warnings.warn(f"torch.compile failed ({self.failed}); running {self.what} eagerly", RuntimeWarning,
                              stacklevel=2)  # fmt: skip
        return self.eager(*args, **kwargs)


def guarded_compile(fn, what: str, **options) -> GuardedCompiled:
    """`torch.compile(fn, **options)` with an eager fallback."""
    return GuardedCompiled(torch.compile(fn, **options), fn, what)


def compile_block(block: nn.Module, **options) -> nn.Module:
    """Compile one block in place (as `nn.Module.compile` does), with the eager fallback; returns the block."""
    block._compiled_call_impl = guarded_compile(block._call_impl, type(block).__name__, **options)
    return block


def uncompile(model: nn.Module) -> nn.Module:
    """Undo `compile_blocks`: every block and packed part runs eagerly again."""
    for module in model.modules():
        if isinstance(module._compiled_call_impl, GuardedCompiled):
            module._compiled_call_impl = None
        if getattr(module, "packed_parts", None) is not None:
            module.packed_parts = None
    return model


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile every DiT block of `model` (and the sparse RefineNet's packed block parts) in place; returns how many.

    `options` go to torch.compile (e.g. `backend`, `mode`, `dynamic`).
    """
    compiled = 0
    for module in model.modules():
        if isinstance(module, DiTBlock):
            compile_block(module, **options)
            compiled += 1
        if hasattr(module, "compile_packed"):  # the sparse RefineNet calls its blocks' parts on packed tokens
            module.compile_packed(**options)
    return compiled


def compile_failures(model: nn.Module) -> list[str]:
    """Why compiled regions of `model` fell back to eager (empty when none did)."""
    found = []
    for module in model.modules():
        for fn in (module._compiled_call_impl, *(getattr(module, "packed_parts", None) or ())):
            if isinstance(fn, GuardedCompiled) and fn.failed:
                found.append(f"{fn.what}: {fn.failed}")
    return found


def compiled_regions(model: nn.Module) -> int:
    """How many modules of `model` run a compiled forward (regional or whole-module compilation)."""
    return sum(m._compiled_call_impl is not None for m in model.modules())
