"""Timestep spacings: registered components any sampler takes through its `spacing` option."""

import math

import pytest
import torch

import d2it
from d2it.errors import ConfigError, UnknownComponentError
from d2it_sampling.diffusion import GaussianDiffusion, space_timesteps
from d2it_sampling.schedules import linear_betas
from d2it_sampling.spacings import log_sigmas, make_spacing, parse_spacing

AC = GaussianDiffusion(linear_betas(), learn_sigma=False).alphas_cumprod


def test_registered_spacings():
    assert d2it.names("spacing") == ["karras", "log-snr", "trailing", "uniform"]
    assert d2it.get("spacing", "lambda").name == "log-snr"


@pytest.mark.parametrize("steps", [1, 7, 25, 50, 250, 1000, "10,20", "ddim25"])
def test_uniform_is_dits_respacing(steps):
    assert make_spacing("uniform")(AC, steps) == space_timesteps(1000, steps)


def test_trailing_matches_the_published_formula():
    assert make_spacing("trailing")(AC, 10) == list(range(99, 1000, 100))
    assert make_spacing("trailing")(AC, 3) == [332, 666, 999]


@pytest.mark.parametrize("name", ["uniform", "trailing", "log-snr", "karras", "karras:rho=3"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 250, 999, 1000])
def test_every_spacing_gives_distinct_sorted_steps(name, steps):
    kept = make_spacing(name)(AC, steps)
    assert len(kept) == steps and kept == sorted(set(kept))
    assert 0 <= kept[0] and (kept[-1] == 999 or (name, steps) == ("uniform", 1))  # DiT keeps step 0 alone
    if name != "trailing" and steps > 1:
        assert kept[0] == 0


def test_log_snr_steps_are_even_in_log_snr():
    kept = make_spacing("log-snr")(AC, 20)
    lam = -log_sigmas(AC)[kept]
    gaps = lam[:-1] - lam[1:]
    assert gaps.min() > 0
    # the grid is coarse in λ near t = 0, so only the steps away from it are exactly even
    assert float(gaps[5:].max() / gaps[5:].min()) < 1.3


def test_karras_follows_the_rho_ramp():
    n, rho = 10, 7.0
    kept = make_spacing("karras")(AC, n)
    sigma = log_sigmas(AC).exp()
    lo, hi = float(sigma[0]) ** (1 / rho), float(sigma[-1]) ** (1 / rho)
    target = [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)][::-1]
    got = sigma[kept]
    assert torch.allclose(got.log(), torch.tensor(target, dtype=torch.float64).log(), atol=0.1)
    # a smaller rho puts fewer steps at small noise
    assert make_spacing("karras:rho=1")(AC, n)[1] > kept[1]


def test_spacing_names_and_options_are_checked():
    assert parse_spacing(" karras:rho=5, ") == ("karras", {"rho": "5"})
    with pytest.raises(UnknownComponentError, match="karras, log-snr, trailing, uniform"):
        make_spacing("cosine")
    with pytest.raises(ConfigError, match="rho"):
        make_spacing("karras:rho=-1")
    with pytest.raises(ConfigError, match="no option"):
        make_spacing("trailing:rho=2")
    with pytest.raises(ConfigError):
        make_spacing("karras")(AC, 1001)
    with pytest.raises(ConfigError):
        d2it.create("sampler", "ddim", {"spacing": "karras:rho"})
    with pytest.raises(UnknownComponentError):
        d2it.create("sampler", "ddim", {"spacing": "nope"})


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "dpmpp-2m", "dpmpp-2m-sde"])
def test_every_sampler_visits_its_spacings_steps(name):
    d, seen = GaussianDiffusion(linear_betas(), learn_sigma=True), []

    def model_fn(x, t):
        seen.append(int(t[0]))
        return torch.cat([x, x], 1) * 0.1

    sampler = d2it.create("sampler", name, {"spacing": "trailing", "steps": 4})
    assert sampler.timesteps(d) == [249, 499, 749, 999]
    sampler.sample(model_fn, d, (1, 1, 2, 2), generator=torch.Generator().manual_seed(0), progress=False)
    assert sorted(set(seen)) == [249, 499, 749, 999]
    assert seen[0] == 999 and not math.isnan(seen[-1])
