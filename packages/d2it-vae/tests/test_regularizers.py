"""The `kl`, `vq` and `fsq` regularizers."""

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


def test_fsq_rounds_each_channel_to_its_levels():
    reg = d2it.create("regularizer", "fsq", {"levels": "8,5,5,5"}, channels=4)
    assert reg.levels == (8, 5, 5, 5) and reg.codebook_size == 1000 and reg.in_channels == 4
    h = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    codes = reg.posterior(h)
    for c, levels in enumerate(reg.levels):
        values = torch.unique(codes[:, c])
        assert len(values) <= levels and values.abs().max() <= 1.0
        # the codes sit on the grid k / floor(L/2) (with the half-step offset for even L)
        scaled = values * (levels // 2)
        assert torch.allclose(scaled, scaled.round(), atol=1e-5)
    # monotone in h, so nearby inputs never swap order
    line = torch.linspace(-4, 4, 200).view(1, 1, 200, 1).expand(1, 4, 200, 1)
    assert (reg.posterior(line).diff(dim=2) >= 0).all()
    idx = reg.indices(codes)
    assert idx.min() >= 0 and idx.max() < 1000
    # an index identifies a code: equal indices have equal codes
    flat_codes, flat_idx = codes.permute(0, 2, 3, 1).reshape(-1, 4), idx.flatten()
    for i in flat_idx.unique()[:20]:
        assert torch.unique(flat_codes[flat_idx == i], dim=0).shape[0] == 1


def test_fsq_straight_through_gradient_is_the_bound_derivative():
    reg = d2it.create("regularizer", "fsq", {"levels": (5, 5, 5, 5)}, channels=4)
    h = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    reg.posterior(h).sum().backward()
    expected = torch.autograd.functional.jacobian(lambda v: reg.bound(v).sum(), h.detach()) / 2
    torch.testing.assert_close(h.grad, expected)


def test_fsq_needs_one_level_per_channel():
    with pytest.raises(d2it.ConfigError, match="one level per channel"):
        d2it.create("regularizer", "fsq", {"levels": (8, 8, 8)}, channels=4)
    with pytest.raises(d2it.ConfigError, match="level"):
        d2it.create("regularizer", "fsq", {"levels": (8, 1, 8, 8)}, channels=4)


def test_a_dvae_with_fsq_trains_end_to_end():
    """A tiny FSQ DVAE learns to reconstruct: the straight-through path carries the gradient to the encoder."""
    torch.manual_seed(0)
    tiny = {"base_width": 8, "norm_groups": 4, "num_res_blocks": 1, "attn_levels": 0, "mid_attn": False,
            "channel_mult": (1, 1, 2), "decoder_mult": (1, 2), "regularizer": "fsq"}  # fmt: skip
    vae = d2it.create("vae", "dvae-kl", tiny, image_size=16, regularizer_options={"levels": (8, 8, 8, 8)})
    assert vae.regularizer.name == "fsq"
    loss_fn = vae.make_loss(pnet_rand=True, perceptual_weight=0.0, disc_weight=0.0)
    g = torch.Generator().manual_seed(0)
    # smooth images: low-frequency patterns the small model can learn
    images = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear")
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    encoder_before = [p.detach().clone() for p in vae.encoder.parameters()]
    losses = []
    for step in range(30):
        loss, logs = loss_fn.generator_loss(images, vae(images), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["l1"])
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, vae.encoder.parameters()))
    for codes in vae.encode(images[:2]):
        assert all(len(torch.unique(codes[:, c])) <= 8 for c in range(4))


def test_kl_sample_takes_a_given_draw_and_deterministic_ones_ignore_it():
    reg = d2it.create("regularizer", "kl", channels=2)
    params = reg.posterior(torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0)))
    eps = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    mean, logvar = params.chunk(2, dim=1)
    assert torch.allclose(reg.sample(params, noise=eps), mean + torch.exp(0.5 * logvar) * eps)
    assert torch.equal(reg.sample(params, mode=True, noise=eps), mean)
    with pytest.raises(d2it.errors.ConfigError, match="posterior noise has shape"):
        reg.sample(params, noise=eps[:, :1])
    vq = d2it.create("regularizer", "vq", channels=2)
    codes = torch.randn(3, 2, 2, 2)
    assert torch.equal(vq.sample(codes, noise=eps), codes)
