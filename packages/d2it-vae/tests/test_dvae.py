"""Dynamic VAE specifics: taps, KL counting, neighbour copying, three grains, the f8 baseline, errors."""

import math

import pytest
import torch

import d2it
from d2it.errors import ConfigError, DataError
from d2it.io import load_into
from d2it.layout import neighbour_copy

TINY = {"base_width": 8, "norm_groups": 4, "num_res_blocks": 1}


def tiny(name="dvae-kl", image_size=32, regularizer_options=None, **overrides):
    torch.manual_seed(0)
    return d2it.create(
        "vae", name, {**TINY, **overrides}, image_size=image_size, regularizer_options=regularizer_options
    )


def half_flat(batch=2, size=32):
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[..., : size // 2] = 0.1
    return x


def test_defaults_follow_design():
    spec = d2it.get("vae", "dvae-kl")
    c = spec.make_config()
    assert (c.base_width, c.channel_mult, c.num_res_blocks, c.attn_levels) == (128, (1, 1, 2, 2, 4), 2, 2)
    assert (c.latent_channels, c.grains, c.entropy_bins, c.entropy_sigma, c.fine_ratio) == (4, 2, 32, 0.01, 0.5)
    vq = d2it.get("vae", "dvae-vq").make_config()
    assert vq.regularizer == "vq"
    reg = d2it.get("regularizer", "vq").make_config()
    assert (reg.codebook_size, reg.commitment, reg.loss_weight) == (1024, 0.25, 1.0)


def test_full_size_geometry_and_ldm_f8_parameter_count():
    with torch.device("meta"):
        f8 = d2it.create("vae", "vae-f8", image_size=256)
        dvae = d2it.create("vae", "dvae-kl", image_size=256)
    # LDM kl-f8 has 83,653,863 parameters, its 1x1 quant_conv (72) and post_quant_conv (20) included
    assert sum(p.numel() for p in f8.parameters()) == 83_653_863
    assert (tuple(f8.quant_conv.weight.shape), tuple(f8.post_quant_conv.weight.shape)) == ((8, 8, 1, 1), (4, 4, 1, 1))
    assert dvae.quant_conv is None and dvae.post_quant_conv is None
    assert (dvae.downsample, dvae.grains, dvae.region) == (8, 2, 16)
    assert dvae.encoder.tap_levels == [4, 3]  # F=16 tap for the coarse grain, F=8 for the fine one
    assert dvae.pos_embed.shape == (1, 4, 32, 32)
    assert dvae.thresholds == pytest.approx([math.log(32) / 2])


def test_forward_is_neighbour_copy_of_grain_latents():
    vae = tiny().eval()
    x = half_flat()
    vae.set_thresholds([1.0])
    out = vae(x, mode=True)
    assert out.grain_map[..., 0].eq(0).all() and out.grain_map[..., 1].eq(1).all()
    means = [p[:, :4] for p in out.params]
    assert torch.equal(out.z, neighbour_copy(means, out.grain_map))
    assert torch.allclose(out.recon, vae.decode(out.z))


def test_kl_counts_each_used_code_once():
    vae = tiny().eval()
    x = half_flat()
    vae.set_thresholds([1.0])
    out = vae(x)
    kl = [vae.regularizer.kl(p) for p in out.params]
    coarse, fine = out.grain_map == 0, out.grain_map == 1
    expected = kl[0][coarse].sum() + kl[1][fine.repeat_interleave(2, -2).repeat_interleave(2, -1)].sum()
    assert out.reg_loss.item() == pytest.approx((expected / x.shape[0]).item(), rel=1e-5)
    vae.set_thresholds([-1.0])  # all fine: the coarse posterior no longer counts
    assert vae(x).reg_loss.item() == pytest.approx((kl[1].sum() / x.shape[0]).item(), rel=1e-5)


def test_three_grains_shapes_and_routing():
    overrides = {"grains": 3, "channel_mult": (1, 1, 2, 2, 2, 4), "attn_levels": 1}
    vae = tiny(image_size=64, **overrides).eval()
    assert (vae.downsample, vae.region, len(vae.thresholds)) == (8, 32, 2)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[..., :32, :32] = 0.1  # flat
    checker = (torch.arange(32)[:, None] + torch.arange(32)) % 2 == 0
    x[..., 32:, :32] = torch.where(checker, -1 + 2 * 8 / 31, -1 + 2 * 24 / 31)  # two bin centres: ln 2
    scores = vae.coder.scores(x)
    assert scores[0, 0, 0] < 0.1 and scores[0, 1, 0].item() == pytest.approx(math.log(2), abs=1e-3)
    vae.set_thresholds([0.3, 1.0])
    gm = vae.grain_map(x)
    assert gm.tolist() == [[[0, 2], [1, 2]]]
    params = vae.encode(x)
    assert [tuple(p.shape[2:]) for p in params] == [(2, 2), (4, 4), (8, 8)]
    z = vae.sample_latent(params, gm, mode=True)
    assert torch.equal(z[..., :4, :4], params[0][:, :4, :1, :1].expand(1, 4, 4, 4))  # one code copied 4x4
    assert torch.equal(z[..., 4:6, :2], params[1][:, :4, 2:3, :1].expand(1, 4, 2, 2))  # grain 1: 2x2 cells
    assert torch.equal(z[..., :4, 4:], params[2][:, :4, :4, 4:])
    assert vae.decode(z).shape == x.shape


def test_vae_f8_has_one_grain_of_zeros():
    vae = tiny("vae-f8").eval()
    x = half_flat()
    gm = vae.grain_map(x)
    assert gm.shape == (2, 4, 4) and gm.dtype == torch.int64 and not gm.any()
    assert vae.grains == 1 and vae.thresholds == [] and vae.pos_embed is None
    out = vae(x)
    assert out.entropy is None and len(out.params) == 1


def test_vae_f8_quant_convs_start_as_identity_and_old_weights_load(tmp_path):
    torch.manual_seed(0)
    vae = tiny("vae-f8").eval()
    x = half_flat()
    without = tiny("vae-f8", quant_conv=False).eval()
    # the same trunk without the 1x1 convs: an identity quant/post-quant changes nothing
    old = {k: v for k, v in vae.state_dict().items() if "quant_conv" not in k}
    load_into(without, old, where="old.safetensors")
    torch.testing.assert_close(vae.encode(x)[0], without.encode(x)[0])
    z = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(vae.decode(z), without.decode(z))
    # weights written before the convs existed load into the new layout, the convs as identity
    fresh = tiny("vae-f8")
    with torch.no_grad():
        fresh.quant_conv.weight.mul_(3.0)
    load_into(fresh, old, where="old.safetensors")
    torch.testing.assert_close(fresh.quant_conv.weight[:, :, 0, 0], torch.eye(8))
    torch.testing.assert_close(fresh.post_quant_conv.bias, torch.zeros(4))
    # and the convs act when they are not the identity: LDM's order (moments -> quant_conv, z -> post_quant_conv)
    with torch.no_grad():
        fresh.post_quant_conv.weight.mul_(2.0)
    torch.testing.assert_close(fresh.eval().decode(z), without.decode(2.0 * z))


def test_vq_latents_are_codebook_entries():
    vae = tiny("dvae-vq", regularizer_options={"codebook_size": 16}).eval()
    params = vae.encode(half_flat())
    reg = vae.regularizer
    for p in params:
        assert torch.allclose(p, reg.lookup(reg.indices(p)), atol=1e-6)


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="norm_groups"):
        tiny(norm_groups=3)
    with pytest.raises(ConfigError, match="decoder"):
        tiny(grains=3)
    with pytest.raises(ConfigError, match="region size"):
        tiny(image_size=40)
    with pytest.raises(d2it.UnknownComponentError):
        tiny(regularizer="nope")
    vae = tiny()
    with pytest.raises(DataError, match="shape"):
        vae.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(DataError, match="latents"):
        vae.decode(torch.zeros(1, 4, 8, 8))


def test_counting_macs():
    from d2it.counting import count

    vae = tiny()
    counts = count(vae, *vae.example_inputs(1))
    assert counts.params == sum(p.numel() for p in vae.parameters())
    assert counts.macs > 0 and counts.attention_macs > 0


def test_forward_takes_the_posterior_draws_per_image():
    vae = tiny()
    images = half_flat(batch=4)
    shapes = vae.noise_shapes()
    assert shapes == [(vae.latent_channels, 2, 2), (vae.latent_channels, 4, 4)]
    noise = [torch.randn(4, *s, generator=torch.Generator().manual_seed(g)) for g, s in enumerate(shapes)]
    with torch.no_grad():
        whole = vae(images, noise=noise).z
        halves = torch.cat([vae(images[i : i + 2], noise=[e[i : i + 2] for e in noise]).z for i in (0, 2)])
        params = vae.encode(images)
        assert torch.allclose(halves, whole, atol=1e-5)  # an image's draw does not depend on its batch
        grain_map = vae.grain_map(images)
        assert torch.equal(vae.sample_latent(params, grain_map, noise=noise), whole)
        assert not torch.allclose(vae(images).z, whole)


def test_a_regularizer_without_the_noise_keyword_draws_its_own():
    vae = tiny()
    own = vae.regularizer.sample
    vae.regularizer.sample = lambda params, generator=None, mode=False: own(params, generator=generator, mode=mode)
    images = half_flat(batch=2)
    noise = [torch.zeros(2, *s) for s in vae.noise_shapes()]
    with torch.no_grad():
        drawn = vae(images, generator=torch.Generator().manual_seed(3), noise=noise).z
        again = vae(images, generator=torch.Generator().manual_seed(3)).z
    assert torch.equal(drawn, again)
