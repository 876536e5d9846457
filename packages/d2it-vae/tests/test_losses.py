"""Stage-1 losses: L1 + LPIPS + adaptive hinge GAN + regularizer."""

import pytest
import torch

import d2it
from d2it.errors import CheckpointError, ConfigError
from d2it_vae.losses import NLayerDiscriminator, hinge_d_loss, make_lpips

TINY = {"base_width": 8, "norm_groups": 4, "num_res_blocks": 1}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vae = d2it.create("vae", "dvae-kl", TINY, image_size=32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return vae, x


def test_gan_terms_start_at_disc_start(setup):
    vae, x = setup
    loss_fn = vae.make_loss(disc_start=10, reg_weight=1e-3, pnet_rand=True)
    out = vae(x)
    loss, logs = loss_fn.generator_loss(x, out, step=9)
    assert logs["g_loss"] == 0.0 and logs["d_weight"] == 0.0
    l1 = (x - out.recon).abs().mean().item()
    assert logs["l1"] == pytest.approx(l1, rel=1e-5)
    pixels = x[0].numel()  # LDM sums the reconstruction per sample (logvar starts at 0)
    expected = (l1 + logs["lpips"]) * pixels + 1e-3 * out.reg_loss.item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    d_loss, d_logs = loss_fn.discriminator_loss(x, out, step=9)
    assert d_loss.item() == 0.0 and d_loss.requires_grad
    loss2, logs2 = loss_fn.generator_loss(x, out, step=10)
    assert logs2["g_loss"] != 0.0 and 0.0 < logs2["d_weight"] <= 0.75 * pixels  # the cap on the pixel-mean scale
    assert loss2.item() == pytest.approx(loss.item() + logs2["d_weight"] * logs2["g_loss"], rel=1e-4)


def test_adaptive_weight_matches_gradient_ratio_and_cap(setup):
    vae, x = setup
    loss_fn = vae.make_loss(pnet_rand=True, perceptual_weight=0.0, adaptive_cap=1e9)
    out = vae(x)
    nll = (x - out.recon).abs().mean()
    g = -loss_fn.discriminator(out.recon).mean()
    last = vae.last_layer()
    a = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    b = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    assert loss_fn.adaptive_weight(nll, g).item() == pytest.approx((a / (b + 1e-4)).item(), rel=1e-4)
    capped = vae.make_loss(pnet_rand=True, perceptual_weight=0.0, adaptive_cap=1e-6)
    assert capped.adaptive_weight(nll, g).item() == pytest.approx(1e-6)
    assert capped.adaptive_weight(nll, g, cap_scale=3.0).item() == pytest.approx(3e-6)
    with torch.no_grad():
        assert loss_fn.adaptive_weight(nll.detach(), g.detach()).item() == 0.0


def test_discriminator_is_three_layer_patchgan_with_hinge_loss():
    d = NLayerDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))


@pytest.mark.parametrize(
    "vae_name, options, weight",
    [
        ("dvae-kl", {}, 1e-6),
        ("dvae-vq", {}, 1.0),
        ("dvae-vq", {"loss_weight": 0.5}, 0.5),
        ("dvae-kl", {"loss_weight": 1e-4}, 1e-4),
    ],
)
def test_the_regularizer_carries_its_loss_weight(vae_name, options, weight):
    reg = {"codebook_size": 16, **options} if vae_name == "dvae-vq" else options
    vae = d2it.create("vae", vae_name, TINY, image_size=32, regularizer_options=reg)
    assert vae.make_loss(pnet_rand=True).reg_weight == weight
    assert vae.make_loss(pnet_rand=True, reg_weight=0.25).reg_weight == 0.25


def test_lpips_loads_local_vgg_weights(tmp_path):
    rand = make_lpips(pnet_rand=True)
    state = {}
    for stage in (rand.net.slice1, rand.net.slice2, rand.net.slice3, rand.net.slice4, rand.net.slice5):
        for index, layer in stage.named_children():
            for name, tensor in layer.named_parameters():
                state[f"features.{index}.{name}"] = torch.randn_like(tensor)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loaded = make_lpips(lpips_weights=str(path))
    assert torch.equal(loaded.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(loaded.net.slice5._modules["28"].bias, state["features.28.bias"])
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loaded(x, x).abs().max() < 1e-6 and loaded(x, -x).item() > 0
    with pytest.raises(CheckpointError, match="does not exist"):
        make_lpips(lpips_weights=str(tmp_path / "missing.pth"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="VGG16"):
        make_lpips(lpips_weights=str(tmp_path / "bad.pth"))


def test_lpips_stays_frozen_in_train_mode(setup):
    vae, _ = setup
    loss_fn = vae.make_loss(pnet_rand=True).train()
    assert loss_fn.discriminator.training and not loss_fn.perceptual.training
    assert all(not p.requires_grad for p in loss_fn.perceptual.parameters())


# -- LDM's LPIPSWithDiscriminator, restated from ldm/modules/losses/contperceptual.py ----------------


def ldm_generator_loss_before_gan(inputs, reconstructions, p_loss, mean, logvar_posterior, logvar, kl_weight):
    """LDM's generator loss without the GAN term: per-sample sums over a learned log-variance, KL summed."""
    rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
    rec_loss = rec_loss + 1.0 * p_loss
    nll_loss = rec_loss / torch.exp(logvar) + logvar
    nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
    var = torch.exp(logvar_posterior)
    kl_loss = 0.5 * torch.sum(torch.pow(mean, 2) + var - 1.0 - logvar_posterior, dim=[1, 2, 3])
    kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
    return nll_loss + kl_weight * kl_loss, nll_loss


@pytest.mark.parametrize("logvar", [0.0, 1.3])
def test_kl_loss_is_normalised_as_ldm(logvar):
    torch.manual_seed(0)
    vae = d2it.create("vae", "vae-f8", {**TINY, "channel_mult": (1, 2), "decoder_mult": (1, 2)}, image_size=16)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss_fn = vae.make_loss(pnet_rand=True, logvar_init=logvar)
    assert loss_fn.normalization == "ldm" and loss_fn.reg_weight == 1e-6
    out = vae(x, generator=torch.Generator().manual_seed(2))
    loss, logs = loss_fn.generator_loss(x, out, step=-1)
    p_loss = loss_fn.perceptual(x, out.recon)
    mean, logvar_posterior = out.params[0].chunk(2, dim=1)
    want, want_nll = ldm_generator_loss_before_gan(
        x, out.recon, p_loss, mean, logvar_posterior, torch.tensor(logvar), 1e-6
    )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["nll"] == pytest.approx(want_nll.item(), rel=1e-5) and logs["logvar"] == pytest.approx(logvar)
    # the KL weighs like LDM's whatever the image size: ratio of KL to NLL gradients is size-free
    assert loss_fn.convention() == {
        "normalization": "ldm", "reg_weight": 1e-6, "perceptual_weight": 1.0, "adaptive_cap": 0.75,
        "adaptive_cap_times_pixels": True, "learn_logvar": False, "logvar_init": logvar,
        "logvar": pytest.approx(logvar),
    }  # fmt: skip


def test_logvar_is_fixed_by_default_and_learnable_as_an_option(setup):
    vae, x = setup
    # fixed at 0 by default: LDM's released training (logvar never reaches its optimizer), sgm's learn_logvar=False
    fixed = vae.make_loss(pnet_rand=True, perceptual_weight=0.0)
    assert not fixed.logvar.logvar.requires_grad and fixed.convention()["learn_logvar"] is False
    loss_fn = vae.make_loss(pnet_rand=True, perceptual_weight=0.0, learn_logvar=True)
    loss, _ = loss_fn.generator_loss(x, vae(x), step=-1)
    loss.backward()
    grad = loss_fn.logvar.logvar.grad
    # d/dlogvar of sum(rec * e^-logvar + logvar)/B at logvar 0 = pixels - sum(rec)/B
    assert grad is not None and grad.item() != 0.0 and loss_fn.convention()["learn_logvar"] is True


def test_vq_keeps_taming_means_and_unknown_normalization_is_an_error():
    vae = d2it.create("vae", "dvae-vq", TINY, image_size=32, regularizer_options={"codebook_size": 16})
    loss_fn = vae.make_loss(pnet_rand=True, perceptual_weight=0.0)
    assert loss_fn.normalization == "taming" and not loss_fn.logvar.logvar.requires_grad
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = vae(x)
    loss, logs = loss_fn.generator_loss(x, out, step=-1)
    want = (x - out.recon).abs().mean() + out.reg_loss
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="ldm, taming"):
        vae.make_loss(pnet_rand=True, normalization="sum")
