"""Attention backends agree with the `math` reference, and xformers refuses clearly where it cannot run."""

import pytest
import torch

from d2it.attention import math_attention, sdpa_attention, xformers_attention, xformers_available
from d2it.counting import count
from d2it.errors import D2itError
from d2it.registry import default_registry
from d2it_transformers.dit import Attention
from d2it_transformers.refine import WindowAttention

SHAPES = [(2, 3, 7, 7, 8), (1, 2, 13, 5, 16), (3, 1, 33, 33, 4), (2, 4, 256, 256, 32), (1, 2, 1, 9, 8)]


def _qkv(b, h, n, m, d, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, m, d, generator=g)
    v = torch.randn(b, h, m, d, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _masks(b, h, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, 1, n, m, generator=g) > 0.4
    keep[..., 0] = True  # no query may lose every key
    additive = torch.randn(1, h, n, m, generator=g)
    return [None, keep, keep[:, :, :1], additive]


def _close(a, b, rtol):
    scale = b.abs().max().clamp(min=1e-6)
    assert (a - b).abs().max() <= rtol * scale, f"max abs diff {(a - b).abs().max():.3g} over scale {scale:.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sdpa_matches_math(shape):
    q, k, v = _qkv(*shape)
    for mask in _masks(shape[0], shape[1], shape[2], shape[3]):
        _close(sdpa_attention(q, k, v, mask), math_attention(q, k, v, mask), 1e-5)


def test_math_reference_is_softmax_attention():
    q, k, v = _qkv(1, 1, 3, 4, 2, seed=1)
    weights = torch.softmax(q[0, 0] @ k[0, 0].T / 2**0.5, dim=-1)
    torch.testing.assert_close(math_attention(q, k, v)[0, 0], weights @ v[0, 0])
    mask = torch.tensor([[True, False, True, False]]).expand(3, 4)
    weights = torch.softmax((q[0, 0] @ k[0, 0].T / 2**0.5).masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(math_attention(q, k, v, mask)[0, 0], weights @ v[0, 0])


@pytest.mark.parametrize("backend", ["sdpa", "math", "auto"])
def test_layers_agree_across_backends(backend):
    torch.manual_seed(0)
    fn = default_registry().create("attention", backend)
    for layer in (Attention(32, 4, math_attention), WindowAttention(32, 4, math_attention, (6, 6), 4)):
        x = torch.randn(2, 36, 32)
        expected = layer(x)
        layer.attention = fn
        _close(layer(x), expected, 1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math", "auto"])
def test_backends_count_the_same_attention(backend):
    layer = Attention(32, 4, default_registry().create("attention", backend))
    counts = count(layer, torch.randn(1, 50, 32))
    assert counts.attention_macs == 4 * 50 * 50 * 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_xformers_on_cpu_is_a_clear_error():
    with pytest.raises(D2itError, match="CUDA"):
        default_registry().create("attention", "xformers")
    with pytest.raises(D2itError, match="CUDA tensors in fp16 or bf16"):
        xformers_attention(*_qkv(1, 1, 4, 4, 8))


def test_xformers_in_fp32_is_a_clear_error():
    with pytest.raises(D2itError, match="fp16 or bf16"):
        xformers_attention(*_qkv(1, 1, 4, 4, 8, device="cuda" if torch.cuda.is_available() else "cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not xformers_available(), reason="needs xformers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 256, 256, 64), (1, 16, 77, 77, 72), (4, 12, 1024, 1024, 64)])
def test_xformers_matches_sdpa(shape, dtype):
    q, k, v = _qkv(*shape, dtype=dtype, device="cuda")
    fn = default_registry().create("attention", "xformers")
    tol = 2e-2 if dtype is torch.bfloat16 else 4e-3
    for mask in (None, _masks(shape[0], shape[1], shape[2], shape[3])[1].cuda()):
        _close(fn(q, k, v, mask).float(), sdpa_attention(q, k, v, mask).float(), tol)
