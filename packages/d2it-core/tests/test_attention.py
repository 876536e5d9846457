"""Attention backends agree with the reference and refuse what they cannot run."""

import pytest
import torch

import d2it
from d2it.attention import auto_attention, math_attention, sdpa_attention
from d2it.errors import D2itError
from d2it.testing import registry_with


@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (33, 17), (64, 64)])
def test_sdpa_matches_math(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    q = torch.randn(2, 3, n, 16, generator=g)
    k = torch.randn(2, 3, m, 16, generator=g)
    v = torch.randn(2, 3, m, 16, generator=g)
    torch.testing.assert_close(sdpa_attention(q, k, v), math_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_masks_agree_bool_and_additive():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 9, 9, generator=g) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    ref = math_attention(q, k, v, mask)
    torch.testing.assert_close(sdpa_attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(math_attention(q, k, v, bias), ref, rtol=1e-5, atol=1e-6)


def test_auto_is_sdpa_on_cpu():
    q = torch.randn(1, 2, 5, 8)
    assert torch.equal(auto_attention(q, q, q), sdpa_attention(q, q, q))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_xformers_on_cpu_is_a_clear_error():
    reg = registry_with()
    with pytest.raises(D2itError, match="needs a CUDA GPU"):
        reg.create("attention", "xformers")
    from d2it.attention import xformers_attention

    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(D2itError, match="CUDA tensors in fp16 or bf16, got cpu float32"):
        xformers_attention(q, q, q)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xformers_matches_sdpa_on_gpu():
    pytest.importorskip("xformers")
    fn = registry_with().create("attention", "xformers")
    q, k, v = (torch.randn(2, 4, 77, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(fn(q, k, v), sdpa_attention(q, k, v), rtol=2e-2, atol=2e-2)


def test_backends_are_registered():
    assert registry_with().names("attention") == ["auto", "math", "sdpa", "xformers"]
    assert registry_with().create("attention", "math") is math_attention
    assert d2it.KINDS[0] == "vae"
