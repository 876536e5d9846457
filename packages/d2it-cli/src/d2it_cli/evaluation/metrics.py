"""The metric components: thin layers over torch-fidelity (FID, IS, KID, precision/recall) and lpips; PSNR and SSIM."""

import abc
from pathlib import Path

import attrs
import numpy as np
import torch

from d2it.errors import ConfigError, D2itError, DataError
from d2it.plugin_api import reserved_error


def _fidelity(module: str, name: str):
    """A torch-fidelity function, imported when a metric is computed (it pulls in torchvision; listing
    the metric specs, as `d2it plugins` does, should not)."""
    import importlib

    return getattr(importlib.import_module(f"torch_fidelity.{module}"), name)


class FeatureSet:
    """Features of one image set per layer, plus FID statistics (computed from them or loaded)."""

    def __init__(self, features: dict | None = None, stats: dict | None = None, count: int = 0):
        self.features = dict(features or {})
        self._stats = dict(stats or {})  # layer -> {"mu": ndarray, "sigma": ndarray}
        self.count = count or (len(next(iter(self.features.values()))) if self.features else 0)

    def stats(self, layer: str) -> dict:
        """FID statistics (mean, covariance) of a layer, computed by torch-fidelity from its features."""
        if layer not in self._stats:
            to_statistics = _fidelity("metric_fid", "fid_features_to_statistics")
            self._stats[layer] = to_statistics(self.layer(layer, "FID statistics"))
        return self._stats[layer]

    def set_stats(self, layer: str, mu, sigma):
        """Use given FID statistics for a layer (e.g. ADM's precomputed ones)."""
        self._stats[layer] = {"mu": mu, "sigma": sigma}

    def has_stats(self, layer: str) -> bool:
        """True when FID statistics of `layer` are known or computable."""
        return layer in self._stats or layer in self.features

    def layer(self, layer: str, what: str = "features") -> torch.Tensor:
        """(N, D) features of a layer; missing ones are a DataError."""
        if layer not in self.features:
            raise DataError(f"{what} need features of layer {layer!r}, which this set does not hold")
        return self.features[layer]


class FeatureMetric(abc.ABC):
    """A metric computed from extractor features of generated images (and a reference set)."""

    metric = "fid"  # torch-fidelity's metric whose default layer this one reads
    needs_reference = True
    needs_reference_features = True

    def __init__(self, config, device="cpu", **context):
        self.config = config
        self.device = torch.device(device)

    def layer_for(self, extractor_cls) -> str:
        """The feature layer this metric reads from a torch-fidelity extractor class (its `layer` option, reserved)."""
        layer = getattr(self.config, "layer", None)
        if layer is not None and not isinstance(layer, str):
            problem = f"metric {type(self).__name__}: layer {layer!r} is not a feature layer name"
            raise ConfigError(reserved_error("metric", "layer", problem))
        return layer or extractor_cls.get_default_feature_layer_for_metric(self.metric)

    @abc.abstractmethod
    def __call__(self, gen: FeatureSet, ref: FeatureSet | None, layer: str, seed: int) -> dict[str, float]:
        """Metric values from generated (and reference) features."""


class PixelMetric(abc.ABC):
    """A metric computed from the pixels of generated and reference images (no feature extractor, no weights).

    `accumulator(seed)` gives an object whose `add(images)` takes uint8 (B, 3, H, W) batches in order;
    calling the metric on two filled accumulators gives its values.
    """

    needs_reference = True

    @abc.abstractmethod
    def accumulator(self, seed: int):
        """An empty per-set accumulator fed batch by batch."""

    @abc.abstractmethod
    def __call__(self, gen, ref) -> dict[str, float]:
        """Metric values from the generated and the reference accumulators."""


@attrs.frozen
class FidConfig:
    """Options of FID: the feature layer (None: the extractor's FID layer, pool3 2048 for Inception)."""

    layer: str | None = None


class FID(FeatureMetric):
    """Fréchet distance between Gaussian fits of two feature sets (torch-fidelity's implementation)."""

    key = "fid"
    needs_reference_features = False

    def __call__(self, gen, ref, layer, seed):
        s1, s2 = dict(gen.stats(layer)), dict(ref.stats(layer))
        for k in ("mu", "sigma"):  # torch-fidelity asserts equal dtypes; ADM's statistics are float64
            if s1[k].dtype != s2[k].dtype:
                s1[k], s2[k] = s1[k].astype(np.float64), s2[k].astype(np.float64)
        if s1["mu"].shape != s2["mu"].shape:
            raise DataError(f"FID statistics have {s1['mu'].shape[0]} and {s2['mu'].shape[0]} dimensions")
        value = _fidelity("metric_fid", "fid_statistics_to_metric")(s1, s2, False)["frechet_inception_distance"]
        return {self.key: float(value)}


class RFID(FID):
    """FID between reconstructions and their inputs (rFID)."""

    key = "rfid"


@attrs.frozen
class IscConfig:
    """Options of the Inception Score (torch-fidelity defaults)."""

    splits: int = 10
    shuffle: bool = True
    layer: str | None = None


class ISC(FeatureMetric):
    """Inception Score of the generated set alone."""

    metric = "isc"
    needs_reference = False
    needs_reference_features = False

    def __call__(self, gen, ref, layer, seed):
        splits = min(self.config.splits, gen.count)
        to_metric = _fidelity("metric_isc", "isc_features_to_metric")
        out = to_metric(gen.layer(layer, "IS"), splits, self.config.shuffle, seed)
        return {"isc": out["inception_score_mean"], "isc_std": out["inception_score_std"]}


@attrs.frozen
class KidConfig:
    """Options of KID (torch-fidelity defaults; the subset size is capped at the set sizes)."""

    subsets: int = 100
    subset_size: int = 1000
    degree: int = 3
    gamma: float | None = None
    coef0: float = 1.0
    layer: str | None = None


class KID(FeatureMetric):
    """Kernel Inception Distance (polynomial-kernel MMD over random subsets)."""

    metric = "kid"

    def __call__(self, gen, ref, layer, seed):
        f1, f2 = gen.layer(layer, "KID"), ref.layer(layer, "KID")
        c = self.config
        size = min(c.subset_size, len(f1), len(f2))
        out = _fidelity("metric_kid", "kid_features_to_metric")(
            f1,
            f2,
            kid_subsets=c.subsets,
            kid_subset_size=size,
            kid_kernel="poly",
            kid_kernel_poly_degree=c.degree,
            kid_kernel_poly_gamma=c.gamma,
            kid_kernel_poly_coef0=c.coef0,
            rng_seed=seed,
            verbose=False,
        )
        mean, std = out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]
        return {"kid": mean, "kid_std": std, "kid_subset_size": size}


@attrs.frozen
class PrcConfig:
    """Options of precision/recall (k-NN manifolds, k = 3 as ADM; layer None: the extractor's PRC layer)."""

    neighborhood: int = 3
    batch_size: int = 10000
    layer: str | None = None


class PRC(FeatureMetric):
    """Improved precision and recall (Kynkäänniemi et al.), torch-fidelity's implementation."""

    metric = "prc"

    def __call__(self, gen, ref, layer, seed):
        f1, f2 = gen.layer(layer, "precision/recall"), ref.layer(layer, "precision/recall")
        f1, f2 = f1.to(self.device), f2.to(self.device)  # k-NN distances on the accelerator when there is one
        k = self.config.neighborhood
        if min(len(f1), len(f2)) <= k:
            raise DataError(f"precision/recall with {k} neighbours needs more than {k} images per set")
        out = _fidelity("metric_prc", "prc_features_to_metric")(
            f1, f2, prc_neighborhood=k, prc_batch_size=self.config.batch_size, save_cpu_ram=True, verbose=False
        )
        return {"precision": out["precision"], "recall": out["recall"]}


@attrs.frozen
class LpipsConfig:
    """Options of LPIPS: the trunk (vgg, alex, squeeze) and an optional full LPIPS state-dict file."""

    net: str = "vgg"
    weights: str | None = None


def _trunk_weights(net: str):
    """torchvision weights enum entry that lpips loads for a trunk."""
    import torchvision.models as tvm

    table = {
        "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
        "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
        "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in table:
        raise D2itError(f"unknown LPIPS net {net!r}; valid: {', '.join(table)}")
    return table[net]


class LPIPS:
    """Learned perceptual distance between image pairs in [-1, 1] (the lpips package, v0.1)."""

    pairwise = True

    def __init__(self, config: LpipsConfig, device="cpu"):
        from d2it.weights import hub_cache_path, hub_file, load_plain, lpips_network

        self.config = config
        entry = _trunk_weights(config.net)
        if config.weights:  # a full LPIPS state dict (trunk and linear layers)
            if not Path(config.weights).is_file():
                raise DataError(f"LPIPS weights {config.weights} do not exist")
            state = load_plain(config.weights, "LPIPS weights")
            self.model = lpips_network(config.net, trunk=None, linear=False)
            try:
                self.model.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise DataError(
                    f"LPIPS weights {config.weights} do not fit lpips net {config.net!r} ({first})"
                ) from None
        else:  # torchvision's trunk from torch.hub's cache and lpips's linear layers, both as plain tensors
            try:
                trunk = hub_file(entry.url, f"LPIPS {config.net} trunk weights")
            except D2itError:
                raise D2itError(
                    f"the LPIPS {config.net} trunk weights are not in torch's cache and cannot be downloaded; "
                    f"fetch {entry.url} and put it at {hub_cache_path(entry.url)}, or pass --lpips-weights PATH "
                    "(a full LPIPS state dict)"
                ) from None
            self.model = lpips_network(config.net, trunk=trunk)
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances between two batches of images in [-1, 1]."""
        return self.model(a.to(self.device).float(), b.to(self.device).float()).flatten().cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) peak signal-to-noise ratio in dB of images in [-1, 1], computed on [0, 1]."""
    mse = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian window."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(B,) structural similarity (Wang et al. 2004) of images in [-1, 1], computed on [0, 1].

    Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, data range 1; local statistics over the valid
    region (no padding) and the SSIM map averaged over pixels and channels, as pytorch-msssim and
    skimage (gaussian_weights=True, use_sample_covariance=False).
    """
    if min(a.shape[-2:]) < window:
        raise DataError(f"SSIM needs images of at least {window}x{window} pixels, got {a.shape[-1]}x{a.shape[-2]}")
    x = (a.double().clamp(-1, 1) + 1) / 2
    y = (b.double().clamp(-1, 1) + 1) / 2
    c = x.shape[1]
    w = _gaussian_window(window, sigma).to(x.device)
    wy, wx = w.view(1, 1, -1, 1).expand(c, 1, -1, 1), w.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(t):
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, wy, groups=c), wx, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()
