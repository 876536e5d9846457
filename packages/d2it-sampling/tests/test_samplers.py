"""Samplers beyond the conformance suite: options, guidance, no host sync, and that the suite can fail."""

import math

import pytest
import torch

import d2it
import d2it_sampling.plugin
from d2it.errors import ConfigError
from d2it.layout import project_to_layout
from d2it.registry import use_registry
from d2it.spec import ComponentSpec
from d2it.testing import registry_with
from d2it.testing.sampler import SamplerConformance
from d2it_sampling import samplers as smp
from d2it_sampling.diffusion import GaussianDiffusion
from d2it_sampling.guidance import conditioned_model
from d2it_sampling.samplers import DDIMSampler, DDPMConfig, DDPMSampler, DPMPP2MConfig, DPMPP2MSampler, sample_ddpm
from d2it_sampling.schedules import linear_betas


def diffusion(learn_sigma=True):
    return GaussianDiffusion(linear_betas(), learn_sigma=learn_sigma)


def test_registered_samplers_and_defaults():
    assert d2it.names("sampler") == ["ddim", "ddpm", "dpmpp-2m", "dpmpp-2m-sde", "euler", "heun"]
    ddpm, ddim = d2it.create("sampler", "ddpm"), d2it.create("sampler", "ddim")
    assert isinstance(ddpm, DDPMSampler) and ddpm.config.steps == 250
    assert isinstance(ddim, DDIMSampler) and ddim.config.eta == 0.0
    assert d2it.create("sampler", "ddim", {"eta": "0.5", "steps": "10"}).config.eta == 0.5


@pytest.mark.parametrize(
    "name, options", [("ddpm", {"steps": 0}), ("ddim", {"eta": 2.0}), ("ddim", {"eta": -0.1}), ("ddpm", {"eta": 0.5})]
)
def test_bad_sampler_options_are_user_errors(name, options):
    with pytest.raises(d2it.D2itError):
        d2it.create("sampler", name, options)


def test_default_steps_come_from_the_config():
    seen = set()

    def model_fn(x, t):
        seen.add(int(t[0]))
        return torch.cat([x, x], 1) * 0.1

    d2it.create("sampler", "ddpm", {"steps": 7}).sample(model_fn, diffusion(), (1, 1, 2, 2), progress=False)
    assert len(seen) == 7 and max(seen) == 999 and min(seen) == 0


def test_no_host_synchronisation_in_the_loop():
    """Sampling on the meta device succeeds only if nothing reads a device tensor back (.item(), .cpu(), bool)."""
    grain_map = torch.zeros(2, 2, 2, dtype=torch.long, device="meta")
    for name, options in (("ddpm", {}), ("ddim", {"eta": 0.5}), ("heun", {}), ("dpmpp-2m", {}), ("dpmpp-2m-sde", {})):
        sampler = d2it.create("sampler", name, options)
        x = sampler.sample(
            lambda x, t: torch.cat([x, x], 1) * 0.1,
            diffusion(),
            (2, 2, 4, 4),
            grain_map=grain_map,
            steps=5,
            progress=False,
        )
        assert x.device.type == "meta" and x.shape == (2, 2, 4, 4)
    with pytest.raises(RuntimeError):
        torch.zeros(1, device="meta").item()  # the check above is meaningful


def test_ddim_eta0_ignores_the_step_generator():
    d = diffusion()
    noise = torch.randn(3, 2, 4, 4)
    model_fn = lambda x, t: torch.cat([torch.tanh(x), torch.zeros_like(x)], 1)  # noqa: E731
    sampler = d2it.create("sampler", "ddim", {"steps": 10})
    a = sampler.sample(
        model_fn, d, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1), progress=False
    )
    b = sampler.sample(
        model_fn, d, noise.shape, noise=noise, generator=torch.Generator().manual_seed(2), progress=False
    )
    assert torch.equal(a, b)
    stochastic = d2it.create("sampler", "ddim", {"steps": 10, "eta": 1.0})
    c = stochastic.sample(
        model_fn, d, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert not torch.allclose(a, c)


def test_noise_shape_must_match():
    with pytest.raises(ConfigError):
        d2it.create("sampler", "ddpm").sample(
            lambda x, t: x, diffusion(False), (1, 1, 2, 2), noise=torch.zeros(2, 1, 2, 2)
        )


# -- classifier-free guidance -----------------------------------------------------------------
class FakeContent(torch.nn.Module):
    """Elementwise in x plus a per-class offset; learned variance; records its calls."""

    in_channels, learn_sigma, num_classes, grains = 2, True, 5, 2

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y, grain_map=None):
        self.calls.append({"batch": x.shape[0], "y": y.clone(), "grain_map": grain_map})
        offset = (y.to(x.dtype) * 0.1).reshape(-1, 1, 1, 1)
        return torch.cat([torch.tanh(x) + offset, torch.tanh(x) * 0.5 - offset], 1)


def test_guidance_is_one_batched_forward():
    model = FakeContent()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([5, 5, 5])
    y = torch.tensor([0, 1, 4])
    grain_map = torch.randint(0, 2, (3, 2, 2))
    out = conditioned_model(model, y, grain_map, cfg_scale=4.0)(x, t)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert call["batch"] == 6 and call["y"].tolist() == [0, 1, 4, 5, 5, 5]
    assert torch.equal(call["grain_map"], torch.cat([grain_map, grain_map]))
    cond = model(x, t, y, grain_map)
    uncond = model(x, t, torch.full_like(y, 5), grain_map)
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 4.0 * (cond[:, :2] - uncond[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond[:, 2:])  # variance from the conditional half


def test_guidance_scale_one_is_a_plain_forward():
    model = FakeContent()
    x, t, y = torch.randn(2, 2, 4, 4), torch.tensor([1, 1]), torch.tensor([2, 3])
    out = conditioned_model(model, y, None, cfg_scale=1.0)(x, t)
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 2 and model.calls[0]["grain_map"] is None
    torch.testing.assert_close(out, model(x, t, y))


def test_guided_sampling_keeps_coarse_cells_identical():
    model = FakeContent()
    grain_map = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 1]]])
    for name in ("ddpm", "ddim"):
        x = d2it.create("sampler", name, {"steps": 10}).sample(
            conditioned_model(model, torch.tensor([1, 2]), grain_map, cfg_scale=2.0),
            diffusion(),
            (2, 2, 4, 4),
            grain_map=grain_map,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        assert torch.equal(x, project_to_layout(x, grain_map, 2))
        assert not torch.equal(x[0, :, 0, 2], x[0, :, 1, 3])  # fine cells are free


def test_respaced_ancestral_sampling_function_directly():
    d = diffusion(False).respace(5)
    x = sample_ddpm(
        lambda x, t: torch.zeros_like(x),
        d,
        torch.zeros(1, 1, 1, 1),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert torch.isfinite(x).all()


# -- the conformance suite catches broken samplers ----------------------------------------------
class IIDNoiseSampler(DDPMSampler):
    """Ignores the grain map when drawing noise."""

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        return super().run(model_fn, diffusion, x, grain_map=None, generator=generator, progress=progress)


class RespacedTimeSampler(DDPMSampler):
    """Shows the model respaced step indices instead of original steps."""

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        fake = GaussianDiffusion(diffusion.betas, learn_sigma=diffusion.learn_sigma, grains=diffusion.grains)
        return super().run(model_fn, fake, x, grain_map=grain_map, generator=generator, progress=progress)


class TwoStepSampler(DDPMSampler):
    """Takes two steps whatever `steps` says: too coarse to reproduce the mixture."""

    def sample(self, model_fn, diffusion, shape, **kwargs):
        kwargs["steps"] = 2
        return super().sample(model_fn, diffusion, shape, **kwargs)


def sample_dpmpp_2m_ratio_one(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, **_):
    """DPM-Solver++(2M) with a wrong step-size ratio: r = 1 (exact only when consecutive log-SNR steps are equal)."""
    denoise = smp._denoiser(model_fn, diffusion, False)
    y, old = smp._to_ve(diffusion, x), None
    for _, t, sigma, sigma_next in smp._sigma_steps(diffusion, x):
        denoised = denoise(y, t, sigma)
        if sigma_next == 0:
            return denoised
        h = math.log(sigma / sigma_next)
        target = denoised if old is None else 1.5 * denoised - 0.5 * old
        y = (sigma_next / sigma) * y - math.expm1(-h) * target
        old = denoised
    return y


class WrongRatioSampler(DPMPP2MSampler):
    """DPM-Solver++(2M) whose step-size ratio is wrong (r = 1) but which still declares order 2."""

    function = staticmethod(sample_dpmpp_2m_ratio_one)


class BrokenPlugin:
    @d2it.hookimpl
    def d2it_samplers(self):
        return [
            ComponentSpec("iid", "sampler", IIDNoiseSampler, DDPMConfig),
            ComponentSpec("respaced-t", "sampler", RespacedTimeSampler, DDPMConfig),
            ComponentSpec("two-step", "sampler", TwoStepSampler, DDPMConfig),
            ComponentSpec("wrong-ratio", "sampler", WrongRatioSampler, DPMPP2MConfig),
        ]


@pytest.mark.parametrize(
    "name, check",
    [
        ("iid", "test_respects_grain_layout"),
        ("respaced-t", "test_model_sees_original_timesteps"),
        ("two-step", "test_oracle_two_point_mixture"),
        ("wrong-ratio", "test_convergence_order_on_uneven_steps"),
    ],
)
def test_conformance_suite_fails_broken_samplers(name, check):
    suite = SamplerConformance()
    suite.name = name
    with use_registry(registry_with(d2it_sampling.plugin, BrokenPlugin())):
        with pytest.raises(AssertionError):
            getattr(suite, check)()


def test_wrong_ratio_sampler_passes_every_other_check():
    """The wrong-ratio bug hides from the checks that do not measure the convergence order."""
    suite = SamplerConformance()
    suite.name = "wrong-ratio"
    with use_registry(registry_with(d2it_sampling.plugin, BrokenPlugin())):
        for check in ("test_respects_grain_layout", "test_oracle_two_point_mixture", "test_gaussian_data_distribution"):
            getattr(suite, check)()
