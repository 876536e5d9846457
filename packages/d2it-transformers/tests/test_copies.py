"""Layout copies per transformer block stay bounded: the residual stream is row-major, q/k/v gradients stack once.

Counts the aten ops that copy memory (clone, copy_, cat; contiguous and copying reshapes become clones) in one
block's forward + backward on the CPU. benchmarks/bench_copies.py reports the per-step counts of whole models.
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from d2it_transformers import sparse
from d2it_transformers.dit import DiT, DiTBlock

COPIES = {"clone", "copy_", "cat"}


class CopyLog(TorchDispatchMode):
    """Counts the memory-copying aten ops (0-d scalars aside)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in COPIES and not (name != "cat" and args[0].dim() == 0):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """All copies counted."""
        return sum(self.counts.values())


def _block_copies(block, x, c) -> Counter:
    x = x.detach().requires_grad_()
    with CopyLog() as log:
        block(x, c).square().sum().backward()
    return log.counts


def test_a_dit_block_copies_once_in_forward_and_backward():
    """The stacked q/k/v gradient is the only copy: no head transposes, LayerNorm or matmul inputs copied."""
    torch.manual_seed(0)
    counts = _block_copies(DiTBlock(32, 2), torch.randn(2, 16, 32), torch.randn(2, 32))
    assert counts == Counter({"cat": 1}), counts


def test_a_window_major_refinenet_block_copies_once(content):
    block = content("window4").refiner.blocks[0]
    assert block.attn.window_major
    counts = _block_copies(block, torch.randn(2, 64, 32), torch.randn(2, 32))
    assert counts == Counter({"cat": 1}), counts


def test_a_packed_sparse_block_makes_no_layout_copies(content, inputs):
    """Only the stacked q/k/v gradient and the gradient of the chunked per-token modulation are concatenated."""
    model = content("window4-sparse")
    layout = model.refiner.layout(inputs(model)[3])
    assert layout.dest is not None  # the padded path, with its index_copy / index_select
    block = model.refiner.blocks[0]
    h = torch.randn(layout.sample.numel(), 32, requires_grad=True)
    with CopyLog() as log:
        sparse.packed_block(block, h, torch.randn(2, 32), layout).square().sum().backward()
    assert log.counts == Counter({"cat": 2}), log.counts


@pytest.mark.parametrize("kind", ["dit", "window4", "window4-sparse", "global"])
def test_every_block_sees_a_row_major_residual_stream(content, inputs, kind):
    """The patch embedding's conv output is (B, D, N) in memory; the stream must not inherit that layout."""
    if kind == "dit":
        torch.manual_seed(0)
        model = DiT(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
        args = model.example_inputs(2)
    else:
        model = content(kind)
        args = inputs(model)
    seen = []
    for module in model.modules():
        if isinstance(module, DiTBlock):
            module.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    model(*args)
    dense_blocks = sum(isinstance(m, DiTBlock) for m in model.modules()) - (2 if kind.endswith("sparse") else 0)
    assert len(seen) == dense_blocks and all(seen), seen
