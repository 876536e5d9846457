"""The registered noise schedules."""

import math

import numpy as np
import pytest
import torch

import d2it
from d2it.errors import D2itError
from d2it_sampling.schedules import cosine_betas, linear_betas


def test_registered_names():
    assert d2it.names("schedule") == ["cosine", "linear"]


def test_linear_defaults_match_ddpm():
    betas = d2it.create("schedule", "linear")
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])
    torch.testing.assert_close(betas[1:] - betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_linear_options():
    options = {"num_timesteps": "10", "beta_start": 0.001, "beta_end": 0.05, "rescale": False}
    betas = d2it.create("schedule", "linear", options)
    assert betas.shape == (10,) and betas[-1].item() == pytest.approx(0.05)


def _adm_linear(num_diffusion_timesteps):
    """ADM's `get_named_beta_schedule("linear", T)` (guided_diffusion/gaussian_diffusion.py), restated."""
    scale = 1000 / num_diffusion_timesteps
    beta_start = scale * 0.0001
    beta_end = scale * 0.02
    return np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)


@pytest.mark.parametrize("steps", [1000, 4000, 500, 100, 51])
def test_linear_is_rescaled_as_adm_for_any_length(steps):
    betas = d2it.create("schedule", "linear", {"num_timesteps": steps})
    np.testing.assert_allclose(betas.numpy(), _adm_linear(steps), rtol=1e-12, atol=0)


def test_linear_rescale_can_be_turned_off():
    betas = linear_betas(100, rescale=False)
    assert betas[-1].item() == pytest.approx(0.02)
    assert linear_betas(100)[-1].item() == pytest.approx(0.2)


def test_cosine_matches_its_alpha_bar():
    s, n = 0.008, 1000
    betas = d2it.create("schedule", "cosine")
    assert betas.dtype == torch.float64 and betas.shape == (n,)
    alpha_bar = [math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2 for i in range(n + 1)]
    expected = torch.tensor([alpha_bar[i + 1] / alpha_bar[0] for i in range(n)], dtype=torch.float64)
    unclipped = betas < 0.999
    got = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(got[unclipped][:900], expected[unclipped][:900], rtol=1e-9, atol=1e-12)
    assert betas.max().item() == pytest.approx(0.999)  # the last step is clipped


def test_cosine_max_beta_option():
    assert cosine_betas(100, max_beta=0.5).max().item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: linear_betas(0),
        lambda: linear_betas(10, 0.1, 0.01),
        lambda: linear_betas(10, 0.0, 0.01),
        lambda: linear_betas(20),  # beta_end 0.02 * 1000 / 20 = 1: no noise left
        lambda: cosine_betas(10, max_beta=1.0),
        lambda: d2it.create("schedule", "linear", {"beta_stop": 0.1}),
        lambda: d2it.create("schedule", "cosine", {"s": "abc"}),
    ],
)
def test_bad_options_are_user_errors(call):
    with pytest.raises(D2itError):
        call()
