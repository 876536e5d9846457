"""Gradient checkpointing per block: the same loss and the same gradients as the plain backward pass."""

import pytest
import torch

from d2it.registry import default_registry
from d2it_transformers.dit import DiT


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _grads(model, args, checkpointing):
    model.set_grad_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # label dropout draws alike
    loss = model(*args).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(model, args):
    loss, grads = _grads(model.train(), args, False)
    loss_ck, grads_ck = _grads(model, args, True)
    torch.testing.assert_close(loss_ck, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ck[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_checkpointing_recomputes_blocks(content, inputs, monkeypatch):
    model = _randomise(content("window4")).train()
    calls = []
    from d2it_transformers import dit

    real = dit.checkpoint
    monkeypatch.setattr(dit, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_grad_checkpointing(True)
    model(*inputs(model)).sum().backward()
    assert len(calls) == 4  # 2 backbone blocks + 2 RefineNet blocks
    calls.clear()
    with torch.no_grad():
        model(*inputs(model))
    assert not calls  # no checkpointing without gradients


def test_dit_gradients_equal_with_checkpointing():
    torch.manual_seed(0)
    model = _randomise(DiT(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10))
    x = torch.randn(2, 4, 8, 8)
    _assert_same(model, (x, torch.tensor([3, 500]), torch.tensor([1, 2])))


@pytest.mark.parametrize("refine", ["window4", "window4-sparse", "global"])
def test_content_gradients_equal_with_checkpointing(content, inputs, refine):
    model = _randomise(content(refine))
    _assert_same(model, inputs(model, seed=3))
    assert model.refiner.grad_checkpointing and model.backbone.grad_checkpointing


def test_every_refiner_supports_checkpointing():
    reg = default_registry()
    att = reg.create("attention", "sdpa")
    for name in reg.names("refiner"):
        with torch.device("meta"):
            bb = reg.create("backbone", "dit-s", {"depth": 1}, input_size=8, in_channels=4, num_classes=10, grains=2,
                            attention=att)  # fmt: skip
            model = reg.create("refiner", name, backbone=bb, attention=att)
        model.set_grad_checkpointing(True)
        if model.refiner is not None:
            assert model.refiner.grad_checkpointing, name
