"""The entropy grain coder against an independent NumPy reference and closed-form cases."""

import math

import numpy as np
import pytest
import torch

import d2it
from d2it.errors import D2itError, DataError
from d2it_vae.entropy import fit_thresholds, grains_from_scores, region_entropy


def reference_entropy(images: np.ndarray, region: int, bins: int = 32, sigma: float = 0.01) -> np.ndarray:
    """Loop-by-loop DQ-VAE entropy in float64."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    gray = np.clip(0.2989 * r + 0.5870 * g + 0.1140 * b, -1, 1)
    centres = np.linspace(-1, 1, bins)
    n, h, w = gray.shape
    out = np.zeros((n, h // region, w // region))
    for i in range(n):
        for y in range(h // region):
            for x in range(w // region):
                values = gray[i, y * region : (y + 1) * region, x * region : (x + 1) * region].ravel()
                density = np.array([np.exp(-0.5 * ((values - c) / sigma) ** 2).sum() for c in centres])
                p = density / density.sum()
                p = p[p > 0]
                out[i, y, x] = -(p * np.log(p)).sum()
    return out


def centre(j: int, bins: int = 32) -> float:
    return -1.0 + 2.0 * j / (bins - 1)


@pytest.mark.parametrize("region", [8, 16])
def test_matches_numpy_reference(region):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 48, generator=g) * 2 - 1
    images[0, :, :16, :16] = 0.25  # a flat block among the noise
    ours = region_entropy(images, region=region)
    ref = reference_entropy(images.double().numpy(), region)
    assert ours.shape == (3, 32 // region, 48 // region)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_flat_region_has_zero_entropy():
    images = torch.full((2, 3, 16, 16), centre(20))
    assert region_entropy(images).abs().max() < 1e-6
    # any flat value splits between at most two neighbouring bins
    for v in torch.linspace(-1, 1, 17):
        assert region_entropy(torch.full((1, 3, 16, 16), float(v))).item() <= math.log(2) + 1e-6


def test_two_level_region_has_ln2():
    images = torch.full((1, 3, 16, 16), centre(3))
    images[..., 8:] = centre(27)
    assert region_entropy(images).item() == pytest.approx(math.log(2), abs=1e-5)


def test_uniform_values_reach_ln_bins():
    # every bin centre equally often: exactly ln 32
    values = torch.tensor([centre(j) for j in range(32)]).repeat(8)
    images = values.view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert region_entropy(images).item() == pytest.approx(math.log(32), abs=1e-4)
    # uniform noise over a large region comes close
    noise = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert region_entropy(noise, region=128).item() == pytest.approx(math.log(32), abs=0.02)


def test_flip_flips_entropy_map():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    images[:, :, :32, :16] = -0.5  # make the map asymmetric
    e = region_entropy(images)
    assert torch.allclose(region_entropy(images.flip(-1)), e.flip(-1), atol=1e-6)
    assert torch.allclose(region_entropy(images.flip(-2)), e.flip(-2), atol=1e-6)
    assert not torch.allclose(e, e.flip(-1))


def test_grains_count_exceeded_thresholds():
    scores = torch.tensor([[0.1, 1.0, 2.0, 3.0]])
    assert grains_from_scores(scores, [1.5]).tolist() == [[0, 0, 1, 1]]
    assert grains_from_scores(scores, [0.5, 2.5]).tolist() == [[0, 1, 1, 2]]
    assert grains_from_scores(scores, []).tolist() == [[0, 0, 0, 0]]


def test_coder_component_and_thresholds():
    coder = d2it.create("grain_coder", "entropy", {"grains": 3, "region": 32})
    assert coder.thresholds == pytest.approx([math.log(32) / 3, 2 * math.log(32) / 3])
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    grain_map, scores = coder(images)
    assert grain_map.shape == scores.shape == (2, 2, 2) and grain_map.dtype == torch.int64
    coder.set_thresholds([0.5, 1.0])
    assert coder.thresholds == [0.5, 1.0]
    with pytest.raises(D2itError):
        coder.set_thresholds([1.0])
    with pytest.raises(D2itError):
        coder.set_thresholds([2.0, 1.0])
    with pytest.raises(DataError):
        coder.scores(torch.zeros(1, 3, 40, 40))


def test_fit_thresholds_are_percentiles():
    scores = torch.arange(101, dtype=torch.float32)
    assert fit_thresholds(scores, 2, 0.5) == pytest.approx([50.0])
    assert fit_thresholds(scores, 3, 0.5) == pytest.approx([50.0, 75.0])
    grains = grains_from_scores(scores, fit_thresholds(scores, 2, 0.5))
    assert grains.float().mean().item() == pytest.approx(0.5, abs=0.01)
