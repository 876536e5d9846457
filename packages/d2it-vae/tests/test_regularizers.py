"""The `kl` and `vq` regularizers."""

import pytest
import torch

import d2it


def ones_mask(h):
    return torch.ones(h.shape[0], 1, *h.shape[2:])


def test_kl_closed_form_and_sampling():
    reg = d2it.create("regularizer", "kl", channels=2)
    assert reg.in_channels == 4
    mean = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    logvar = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    params = reg.posterior(torch.cat([mean, logvar], 1))
    expected = 0.5 * (1 + 0) + 0.5 * (4 + torch.e - 1 - 1)
    assert reg.kl(params).item() == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(reg.sample(params, mode=True), mean)
    many = params.expand(20000, 4, 1, 1)
    draws = reg.sample(many, generator=torch.Generator().manual_seed(0))
    assert draws.mean(0).flatten().tolist() == pytest.approx([1.0, -2.0], abs=0.05)
    assert draws.std(0).flatten().tolist() == pytest.approx([1.0, torch.e**0.5], rel=0.03)
    clamped = reg.posterior(torch.full((1, 4, 1, 1), 100.0))
    assert clamped[:, 2:].max() == 20.0


def test_kl_loss_is_masked_sum_over_batch():
    reg = d2it.create("regularizer", "kl", channels=4)
    hs = [torch.randn(2, 8, 2, 2), torch.randn(2, 8, 4, 4)]
    masks = [torch.zeros(2, 1, 2, 2), ones_mask(hs[1])]
    masks[0][:, :, 0, 0] = 1
    _, loss = reg(hs, masks)
    expected = (reg.kl(reg.posterior(hs[0]))[:, 0, 0].sum() + reg.kl(reg.posterior(hs[1])).sum()) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_vq_quantizes_straight_through_with_commitment():
    torch.manual_seed(0)
    reg = d2it.create("regularizer", "vq", {"codebook_size": 8, "commitment": 0.25}, channels=3).eval()
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    params, loss = reg([h], [ones_mask(h)])
    q = reg.lookup(reg.indices(h))
    dist = torch.cdist(h.detach().permute(0, 2, 3, 1).reshape(-1, 3), reg.embed)
    assert torch.equal(reg.indices(h).flatten(), dist.argmin(1))
    assert torch.allclose(params[0], q, atol=1e-6)
    assert loss.item() == pytest.approx(0.25 * ((h - q) ** 2).mean().item(), rel=1e-5)
    params[0].sum().backward()
    assert torch.allclose(h.grad, torch.ones_like(h) + 0.0)  # straight-through: identity gradient


def test_vq_ema_pulls_codes_to_data_and_restarts_dead_codes():
    torch.manual_seed(0)
    reg = d2it.create("regularizer", "vq", {"codebook_size": 4, "ema_decay": 0.5, "dead_threshold": 0.5}, channels=2)
    reg.train()
    centres = torch.tensor([[3.0, 3.0], [-3.0, 3.0]])
    for _ in range(30):
        h = centres[torch.randint(0, 2, (64,))] + 0.01 * torch.randn(64, 2)
        reg([h.T.reshape(1, 2, 8, 8)], [torch.ones(1, 1, 8, 8)])
    # every code moved onto a data cluster: dead codes were restarted on encoder outputs
    d = torch.cdist(reg.embed, centres).min(dim=1).values
    assert d.max() < 0.2
    assert torch.cdist(centres, reg.embed).min(dim=1).values.max() < 0.2


def test_vq_masked_codes_do_not_update_codebook():
    torch.manual_seed(0)
    reg = d2it.create("regularizer", "vq", {"codebook_size": 4, "dead_threshold": 0.0}, channels=2).train()
    before = reg.embed.clone()
    h = torch.randn(1, 2, 4, 4)
    _, loss = reg([h], [torch.zeros(1, 1, 4, 4)])
    assert loss.item() == 0.0
    # with nothing counted, the EMA only decays usage; codes keep their place up to the smoothing
    assert torch.allclose(reg.embed, before, atol=1e-3)
