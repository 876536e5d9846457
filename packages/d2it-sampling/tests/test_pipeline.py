"""The generation pipeline on a fake System (fake content model, grain predictor and VAE)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2it.errors import ConfigError, D2itError
from d2it.layout import project_to_layout
from d2it.system import System, SystemRecord
from d2it_sampling.diffusion import GaussianDiffusion
from d2it_sampling.pipeline import Generation, generate, make_diffusion, sample_seed

SIZE, CHANNELS, CLASSES = 4, 2, 3


class FakeContent(nn.Module):
    """Elementwise in x (so it respects any layout) with a per-class offset; records calls and mode."""

    in_channels, input_size, num_classes = CHANNELS, SIZE, CLASSES

    def __init__(self, grains=2, learn_sigma=True):
        super().__init__()
        self.grains, self.learn_sigma = grains, learn_sigma
        self.out_channels = CHANNELS * (2 if learn_sigma else 1)
        self.weight = nn.Parameter(torch.tensor(0.8))
        self.calls = []

    def forward(self, x, t, y, grain_map=None):
        self.calls.append({"batch": x.shape[0], "grain_map": grain_map, "training": self.training, "y": y.clone()})
        eps = torch.tanh(x * self.weight) + 0.05 * y.to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.cat([eps, torch.tanh(x) * 0.5], 1) if self.learn_sigma else eps


class FakeGrain(nn.Module):
    """Random grain maps from the generator; records the options it was given."""

    trainable = False

    def __init__(self, grid=SIZE // 2):
        super().__init__()
        self.grid = grid
        self.options = []

    def sample(self, classes, generator=None, **options):
        self.options.append(options)
        return torch.randint(0, 2, (classes.shape[0], self.grid, self.grid), generator=generator, device=classes.device)


class FakeVAE(nn.Module):
    """Decodes by nearest upsampling ×8 of a fixed 1×1 convolution to 3 channels."""

    latent_channels, downsample, grains = CHANNELS, 8, 2

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(CHANNELS, 3, 1)
        with torch.no_grad():
            self.proj.weight.fill_(1.5)
            self.proj.bias.zero_()

    def decode(self, z):
        return F.interpolate(self.proj(z), scale_factor=8, mode="nearest")


def make_system(*, vae=True, grain=True, routed=True, learn_sigma=True, sampler="ddpm", options=None, scale=0.5):
    record = SystemRecord(
        backbone="fake",
        vae="fake" if vae else None,
        grain="fake" if grain else None,
        refine="fake" if routed else None,
        sampler=sampler,
        schedule="linear",
        options=options or {},
        image_size=SIZE * 8,
        num_classes=CLASSES,
        latent_scale=scale,
    )
    content = FakeContent(grains=2 if routed else None, learn_sigma=learn_sigma)
    return System(record, vae=FakeVAE() if vae else None, grain=FakeGrain() if grain else None, content=content)


def run(system, classes=(0, 1, 2, 1), **kwargs):
    kwargs.setdefault("steps", 6)
    kwargs.setdefault("progress", False)
    return generate(system, list(classes), **kwargs)


def test_generation_shapes_and_ranges():
    system = make_system()
    out = run(system)
    assert isinstance(out, Generation)
    assert out.images.shape == (4, 3, 32, 32) and out.images.dtype == torch.float32
    assert out.images.min() >= -1 and out.images.max() <= 1
    assert out.grain_maps.shape == (4, 2, 2) and out.grain_maps.dtype == torch.int64
    assert out.latents.shape == (4, CHANNELS, SIZE, SIZE)
    assert torch.isfinite(out.latents).all()


def test_latents_are_unscaled_and_images_decode_them():
    system = make_system(scale=0.25)
    out = run(system)
    with torch.no_grad():
        torch.testing.assert_close(out.images, system.vae.decode(out.latents).clamp(-1, 1))
    # the same noise without the scale: latents are the sampler's output divided by the scale
    unit = run(make_system(scale=1.0))
    torch.testing.assert_close(out.latents * 0.25, unit.latents)


def test_latents_follow_the_sampled_grain_maps():
    out = run(make_system(), classes=range(3))
    torch.testing.assert_close(out.latents, project_to_layout(out.latents, out.grain_maps, 2), rtol=0, atol=1e-6)
    assert (out.grain_maps == 0).any() and (out.grain_maps == 1).any()


def test_deterministic_for_a_seed_and_independent_of_batch_size():
    classes = (0, 1, 2, 0, 1)
    a = run(make_system(), classes, seed=11)
    b = run(make_system(), classes, seed=11, batch_size=2)
    c = run(make_system(), classes, seed=11, batch_size=1)
    for other in (b, c):
        assert torch.equal(a.grain_maps, other.grain_maps)
        torch.testing.assert_close(a.latents, other.latents, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.images, other.images, rtol=1e-5, atol=1e-5)
    d = run(make_system(), classes, seed=12)
    assert not torch.allclose(a.latents, d.latents)
    # sample i depends only on (seed, i): a prefix of the classes gives a prefix of the result
    prefix = run(make_system(), classes[:2], seed=11)
    torch.testing.assert_close(prefix.latents, a.latents[:2], rtol=1e-5, atol=1e-6)


def test_sample_seeds_are_distinct():
    seeds = {sample_seed(s, i, stream) for s in range(3) for i in range(50) for stream in (1, 2)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


def test_batches_and_eval_mode():
    system = make_system()
    system.train()
    run(system, classes=(0, 1, 2, 0, 1), batch_size=2)
    assert {c["batch"] for c in system.content.calls} == {2, 1}
    assert not any(c["training"] for c in system.content.calls)  # no label dropout while sampling
    assert system.training and system.content.training  # modes restored


def test_classifier_free_guidance_doubles_the_batch_with_null_classes():
    system = make_system()
    plain = run(system, classes=(0, 2), seed=3)
    system.content.calls.clear()
    guided = run(system, classes=(0, 2), seed=3, cfg_scale=3.0)
    call = system.content.calls[0]
    assert call["batch"] == 4 and call["y"].tolist() == [0, 2, CLASSES, CLASSES]
    assert len(system.content.calls) == 6  # one forward per step
    assert torch.equal(plain.grain_maps, guided.grain_maps)
    assert not torch.allclose(plain.latents, guided.latents)


def test_grain_options_and_guidance_reach_the_grain_predictor():
    system = make_system()
    run(system, classes=(1,), grain_cfg_scale=2.0, grain_options={"temperature": 0.5})
    assert system.grain.options == [{"temperature": 0.5, "cfg_scale": 2.0}]
    system.grain.options.clear()
    run(system, classes=(1,))
    assert system.grain.options == [{}]  # guidance 1.0 is not passed: predictors without it still work
    with pytest.raises(ConfigError):
        run(system, classes=(1,), grain_cfg_scale=2.0, grain_options={"cfg_scale": 3.0})


def test_routed_model_without_a_grain_predictor_gets_all_fine_maps():
    out = run(make_system(grain=False))
    assert torch.equal(out.grain_maps, torch.ones(4, 2, 2, dtype=torch.long))


def test_plain_dit_gets_no_grain_map():
    system = make_system(grain=False, routed=False)
    out = run(system)
    assert out.grain_maps is None
    assert all(c["grain_map"] is None for c in system.content.calls)


def test_without_a_vae_only_latents():
    out = run(make_system(vae=False))
    assert out.images is None and out.latents.shape == (4, CHANNELS, SIZE, SIZE)


def test_sampler_override_and_options():
    system = make_system(options={"sampler": {"steps": 3}})
    record_default = run(system, steps=None)
    assert len(system.content.calls) == 3  # the record's sampler options: 3 steps
    system.content.calls.clear()
    ddim = run(system, sampler="ddim", sampler_options={"eta": 0.0}, steps=4)
    assert len(system.content.calls) == 4
    assert not torch.allclose(record_default.latents, ddim.latents)
    with pytest.raises(D2itError, match="valid sampler"):
        run(system, sampler="nope")


def test_fixed_variance_content_model():
    out = run(make_system(learn_sigma=False))
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize("classes", [(0, 3), (-1,), (), "abc", ((0, 1),), (0.5,)])
def test_bad_classes_are_user_errors(classes):
    with pytest.raises(ConfigError):
        generate(make_system(), classes, steps=2, progress=False)


def test_bad_batch_size_and_missing_content():
    with pytest.raises(ConfigError):
        run(make_system(), batch_size=0)
    with pytest.raises(D2itError):
        generate(System(SystemRecord()), [0], progress=False)


def test_make_diffusion_from_system_and_record():
    system = make_system(learn_sigma=False, options={"schedule": {"num_timesteps": 100}})
    system.record = SystemRecord(**{**system.record.to_dict(), "schedule": "cosine"})
    diffusion = make_diffusion(system)
    assert isinstance(diffusion, GaussianDiffusion)
    assert diffusion.num_timesteps == 100 and not diffusion.learn_sigma and diffusion.grains == 2
    assert diffusion.betas.max().item() == pytest.approx(0.999)  # cosine's clipped last step
    spaced = make_diffusion(system, steps=10)
    assert spaced.num_timesteps == 10 and spaced.timestep_map[-1].item() == 99
    from_record = make_diffusion(SystemRecord(backbone="dit-s", options={"backbone": {"learn_sigma": False}}))
    assert from_record.num_timesteps == 1000 and not from_record.learn_sigma
    weighted = make_diffusion(make_system(), grain_weights=(1.0, 3.0))
    assert weighted.grain_weights == (1.0, 3.0) and weighted.learn_sigma
    with pytest.raises(D2itError):
        make_diffusion("not a system")
