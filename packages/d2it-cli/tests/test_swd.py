"""`swd` (Progressive GANs' multi-scale sliced Wasserstein distance) against a numpy transcription of the reference,
plus its properties; `ssim` against a numpy transcription of Wang et al. 2004."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2it.errors import ConfigError, DataError
from d2it_cli.evaluation import ssim
from d2it_cli.evaluation import swd as S

SMALL = S.SwdConfig(nhoods_per_image=32)  # fewer descriptors: properties hold, tests stay fast


def pink(n, size=64, seed=0) -> torch.Tensor:
    """(n, 3, size, size) images in [-1, 1] with a 1/f amplitude spectrum (content at every scale, as photos)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt().clamp_min(1 / size)
    x = torch.fft.ifft2(torch.fft.fft2(torch.randn(n, 3, size, size, generator=g)) / r).real
    return (x / x.flatten(1).std(1).view(-1, 1, 1, 1) * 0.4).clamp(-1, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return x
    r = int(3 * sigma + 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)


# ------------------------------------------------------------------ the reference, transcribed in numpy (float64)
# metrics/sliced_wasserstein.py of tkarras/progressive_growing_of_gans, step by step; `blur`, `pad`,
# `normalise` and `dirs_used` switch on the mutations that the agreement test must be able to tell apart.

GAUSS = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def np_convolve(x, kernel, pad="reflect"):
    """5x5 convolution of (N, C, H, W) with mirror borders (scipy.ndimage mode='mirror' == numpy 'reflect')."""
    h, w = x.shape[2:]
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode=pad)
    out = np.zeros_like(x)
    for i in range(5):
        for j in range(5):
            out += kernel[i, j] * p[:, :, i : i + h, j : j + w]
    return out


def np_pyr_down(x, blur=True, pad="reflect"):
    return (np_convolve(x, GAUSS, pad) if blur else x)[:, :, ::2, ::2]


def np_pyr_up(x, pad="reflect"):
    n, c, h, w = x.shape
    res = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
    res[:, :, ::2, ::2] = x
    return np_convolve(res, GAUSS * 4.0, pad)


def np_laplacian_pyramid(images, levels, blur=True, pad="reflect"):
    pyramid = [np.float64(images)]
    for _ in range(1, levels):
        pyramid.append(np_pyr_down(pyramid[-1], blur, pad))
        pyramid[-2] -= np_pyr_up(pyramid[-1], pad)
    return pyramid


def np_descriptors(level, ys, xs, nhood_size):
    """The reference's flat-index gather, with its centres replaced by given ones ((images, nhoods) each)."""
    s = level.shape
    n_img, per = ys.shape
    n = n_img * per
    h = nhood_size // 2
    nhood, chan, x, y = np.ogrid[0:n, 0:3, -h : h + 1, -h : h + 1]
    img = nhood // per
    x = x + xs.reshape(n, 1, 1, 1)
    y = y + ys.reshape(n, 1, 1, 1)
    idx = ((img * s[1] + chan) * s[2] + y) * s[3] + x
    return level.flat[idx]


def np_finalize(desc, normalise=True):
    desc = desc.copy()
    if normalise:
        desc -= np.mean(desc, axis=(0, 2, 3), keepdims=True)
        desc /= np.std(desc, axis=(0, 2, 3), keepdims=True)
    return desc.reshape(desc.shape[0], -1)


def np_sliced_wasserstein(a, b, dirs):
    """`dirs`: (repeats, D, K) unit columns, in place of the reference's np.random.randn draws."""
    results = []
    for d in dirs:
        pa, pb = np.sort(a @ d, axis=0), np.sort(b @ d, axis=0)
        results.append(np.mean(np.abs(pa - pb)))
    return np.mean(results)


def np_swd(a, b, centres, dirs, config, blur=True, pad="reflect", normalise=True, dirs_used=None):
    """Per-level SWD x1e3 of uint8 NCHW sets a and b (the same centres for both, as the library draws them)."""
    levels = len(centres)
    out = []
    for da, db, (ys, xs), d in zip(
        np_laplacian_pyramid(a, levels, blur, pad),
        np_laplacian_pyramid(b, levels, blur, pad),
        centres,
        dirs,
    ):
        fa = np_finalize(np_descriptors(da, ys, xs, config.nhood_size), normalise)
        fb = np_finalize(np_descriptors(db, ys, xs, config.nhood_size), normalise)
        d = d if dirs_used is None else d[:1, :, :dirs_used]
        out.append(1e3 * np_sliced_wasserstein(fa, fb, d))
    return out


@pytest.fixture(scope="module")
def sets():
    """Two uint8 sets of 16 images of 64 px, and the library's centres and directions for seed 3."""
    a, b = to_uint8(pink(16, seed=1)), to_uint8(gaussian_blur(pink(16, seed=2), 0.7))
    config = S.SwdConfig(nhoods_per_image=64)
    resolutions, shapes = S.level_shapes(64, 64, config)
    centres = [(y.numpy(), x.numpy()) for y, x in S.positions(16, shapes, config, seed=3)]
    dirs = [S.directions(3 * 7 * 7, config, seed=3, level=lv).double().numpy() for lv in range(len(shapes))]
    ours = S.sliced_wasserstein(a, b, seed=3, config=config, batch_size=5)
    return a.numpy(), b.numpy(), config, resolutions, centres, dirs, ours


def test_numpy_pyramid_matches_scipy_mirror_mode():
    from scipy import ndimage

    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    assert np.allclose(np_convolve(x, GAUSS), ndimage.convolve(x, GAUSS[None, None], mode="mirror"))


def test_agrees_with_the_reference_transcription(sets):
    a, b, config, resolutions, centres, dirs, ours = sets
    ref = np_swd(a, b, centres, dirs, config)
    assert resolutions == [64, 32, 16] and set(ours) == {"swd", "swd_64", "swd_32", "swd_16"}
    got = [ours[f"swd_{r}"] for r in resolutions]
    assert np.allclose(got, ref, rtol=1e-4), (got, ref)
    assert ours["swd"] == pytest.approx(np.mean(ref), rel=1e-4)


@pytest.mark.parametrize(
    "mutation",
    [{"blur": False}, {"pad": "constant"}, {"normalise": False}, {"dirs_used": 16}],
    ids=["no-blur-before-downsampling", "zero-borders", "no-normalisation", "16-projections"],
)
def test_agreement_tolerance_catches_a_mutated_algorithm(sets, mutation):
    a, b, config, resolutions, centres, dirs, ours = sets
    mutated = np_swd(a, b, centres, dirs, config, **mutation)
    got = [ours[f"swd_{r}"] for r in resolutions]
    assert not np.allclose(got, mutated, rtol=1e-4), (got, mutated)  # the agreement test above would fail


def test_laplacian_pyramid_reconstructs_the_image():
    x = pink(2, 32).double()
    pyramid = S.laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for level in pyramid[-2::-1]:
        rebuilt = S.pyr_up(rebuilt, level.shape[-2:]) + level
    assert torch.allclose(rebuilt, x, atol=1e-10)


# ------------------------------------------------------------------ properties


def test_a_set_against_itself_is_zero_and_resampled_within_sampling_noise():
    a, other = pink(24, seed=1), pink(24, seed=2)
    same = S.sliced_wasserstein(a, a, seed=0)
    assert all(v == 0 for v in same.values())  # one seed: the same centres for equal indices
    resampled = S.distance_from_descriptors(S.descriptors(a, seed=1), S.descriptors(a, seed=2), [64, 32, 16])
    disjoint = S.sliced_wasserstein(a, other)
    blurred = S.sliced_wasserstein(a, gaussian_blur(other, 2.0))
    # other neighbourhoods of the same images differ by no more than another draw of images does, and both
    # differ clearly less than a real change (blur), most of all at the finest level, where sampling noise is lowest
    assert resampled["swd"] < 1.5 * disjoint["swd"] and disjoint["swd"] < blurred["swd"] / 1.4, (resampled, disjoint)
    assert max(resampled["swd_64"], disjoint["swd_64"]) < blurred["swd_64"] / 2.5, (resampled, disjoint, blurred)


def test_grows_with_blur_and_the_finest_level_reacts_first():
    a = pink(24, seed=4)
    values = [S.sliced_wasserstein(a, gaussian_blur(a, s), config=SMALL) for s in (0.0, 0.4, 0.8, 1.6, 3.0)]
    means = [v["swd"] for v in values]
    assert means == sorted(means) and means[0] == 0, means
    small = values[1]
    assert small["swd_64"] > 3 * small["swd_16"], small


def test_grows_with_noise():
    a = pink(24, seed=5)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    means = [S.sliced_wasserstein(a, (a + s * noise).clamp(-1, 1), config=SMALL)["swd"] for s in (0, 0.05, 0.1, 0.2)]
    assert means == sorted(means) and means[1] > 0, means


def test_deterministic_per_seed_and_independent_of_batching():
    a, b = pink(12, seed=6), pink(10, seed=7)
    first = S.sliced_wasserstein(a, b, seed=11, config=SMALL, batch_size=12)
    assert S.sliced_wasserstein(a, b, seed=11, config=SMALL, batch_size=5) == first
    assert S.sliced_wasserstein(a, b, seed=12, config=SMALL) != first
    whole = S.descriptors(a, seed=3, config=SMALL)
    parts = [S.descriptors(a[i : i + 4], seed=3, config=SMALL, start=i) for i in range(0, 12, 4)]
    for level, pieces in zip(whole, zip(*parts)):
        assert torch.equal(level, torch.cat(pieces))


def test_uint8_and_float_inputs_agree():
    a, b = to_uint8(pink(8, seed=8)), to_uint8(pink(8, seed=9))
    from_float = S.sliced_wasserstein(a.float() / 127.5 - 1, b.float() / 127.5 - 1, config=SMALL)
    from_uint8 = S.sliced_wasserstein(a, b, config=SMALL)
    assert from_float == pytest.approx(from_uint8, rel=1e-4)


def test_unequal_set_sizes_use_the_exact_1d_wasserstein_distance():
    g = torch.Generator().manual_seed(0)
    pa, pb = torch.randn(3, 7, generator=g).sort(1).values, torch.randn(3, 5, generator=g).sort(1).values
    got = S._wasserstein_1d(pa.double(), pb.double())
    for k in range(3):  # W1 = integral of |F_a(t) - F_b(t)| dt over the merged sample points
        t = np.sort(np.concatenate([pa[k].numpy(), pb[k].numpy()])).astype(np.float64)
        fa = np.searchsorted(pa[k].numpy(), t[:-1], side="right") / 7
        fb = np.searchsorted(pb[k].numpy(), t[:-1], side="right") / 5
        assert float(got[k]) == pytest.approx(np.sum(np.abs(fa - fb) * np.diff(t)), rel=1e-6)
    same = torch.randn(2, 6, generator=g).sort(1).values
    other = torch.randn(2, 6, generator=g).sort(1).values
    assert torch.allclose(S._wasserstein_1d(same, other), (same - other).abs().mean(1))


def test_resolutions_follow_the_reference():
    assert S.level_shapes(128, 128, S.SwdConfig())[0] == [128, 64, 32, 16]
    assert S.level_shapes(48, 48, S.SwdConfig())[0] == [48, 24]
    assert S.level_shapes(32, 32, S.SwdConfig(resolution_min=8))[0] == [32, 16, 8]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"nhoods_per_image": 0}, "nhoods_per_image must be a positive integer"),
        ({"dirs_per_repeat": -1}, "dirs_per_repeat must be a positive integer"),
        ({"nhood_size": 6}, "nhood_size must be odd"),
        ({"nhood_size": 9, "resolution_min": 8}, "larger than resolution_min 8"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        S.SwdConfig(**options)


def test_bad_options_through_the_registry_name_the_metric():
    from d2it.registry import Registry
    from d2it_cli.evaluation.scoring import make_metrics

    registry = Registry.from_entry_points()
    assert registry.get("metric", "swd").dist == "d2it-cli"
    with pytest.raises(ConfigError, match=r"swd\.nhood_size must be odd"):
        make_metrics(registry, ["swd"], ["swd.nhood_size=6"])
    metric = make_metrics(registry, ["swd"], ["swd.nhoods_per_image=8"])["swd"]
    assert metric.options["nhoods_per_image"] == 8


def test_images_too_small_or_of_two_sizes_are_refused():
    with pytest.raises(ConfigError, match="at least resolution_min=16 pixels, got 8x8"):
        S.sliced_wasserstein(pink(2, 8), pink(2, 8))
    with pytest.raises(ConfigError, match="do not fit the 6x32 pyramid level"):
        S.sliced_wasserstein(pink(2, 64)[..., :12], pink(2, 64)[..., :12])
    with pytest.raises(DataError, match="images of one size"):
        S.sliced_wasserstein(pink(2, 32), pink(2, 16))


# ------------------------------------------------------------------ SSIM


def np_ssim(a, b):
    """Wang et al. 2004 on [0, 1] images: Gaussian window 11, σ 1.5, valid region, mean over pixels and channels."""
    t = np.arange(11) - 5.0
    g = np.exp(-(t**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.sum(g) ** 2
    c1, c2 = 0.01**2, 0.03**2

    def filt(x):  # (H, W) -> (H-10, W-10)
        windows = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum("ijkl,kl->ij", windows, win)

    out = []
    for x, y in zip(a, b):
        maps = []
        for cx, cy in zip(x, y):
            mx, my = filt(cx), filt(cy)
            vx, vy, cxy = filt(cx * cx) - mx**2, filt(cy * cy) - my**2, filt(cx * cy) - mx * my
            maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        out.append(np.mean(maps))
    return np.array(out)


def test_ssim_matches_the_numpy_transcription_and_its_properties():
    a = pink(3, 32, seed=1)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1 * noise).clamp(-1, 1)
    got = ssim(b, a)
    assert got.shape == (3,)
    assert np.allclose(got.numpy(), np_ssim((b.double().numpy() + 1) / 2, (a.double().numpy() + 1) / 2), atol=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(3))
    values = [float(ssim((a + s * noise).clamp(-1, 1), a).mean()) for s in (0.0, 0.05, 0.1, 0.3)]
    assert values == sorted(values, reverse=True) and values[-1] < 0.9, values
    with pytest.raises(DataError, match="at least 11x11"):
        ssim(pink(1, 8), pink(1, 8))
