"""The `entropy` grain coder: Shannon entropy of image regions, mapped to grains by thresholds.

Dynamic Grained Coding (DQ-VAE, D²iT §3.1): per non-overlapping region, a Gaussian kernel density
of the grayscale pixel values on equally spaced bins over [-1, 1], normalised to sum 1, and its
natural-log Shannon entropy. A region's grain is the number of thresholds its entropy exceeds
(0 = coarsest), so with two grains a region is fine iff its entropy > T.
"""

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from einops import rearrange
from torch import nn

from d2it.errors import ConfigError, D2itError, DataError

GRAY = (0.2989, 0.5870, 0.1140)
_CHUNK = 1 << 24  # kernel-density elements per chunk (64 MiB of float32)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (B, 1, H, W) images in [-1, 1] -> (B, H, W) luma with weights (0.2989, 0.5870, 0.1140)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"expected images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    images = images.float()
    if images.shape[1] == 1:
        return images[:, 0]
    w = images.new_tensor(GRAY)
    return torch.einsum("bchw,c->bhw", images, w)


def region_entropy(images: torch.Tensor, region: int = 16, bins: int = 32, sigma: float = 0.01) -> torch.Tensor:
    """Entropy (nats) of each non-overlapping `region` x `region` block: (B, H/region, W/region), float32."""
    gray = grayscale(images).clamp(-1.0, 1.0)  # values outside [-1, 1] would fall off every kernel
    b, h, w = gray.shape
    if h % region or w % region:
        raise DataError(f"image size {h}x{w} is not divisible by the region size {region}")
    pixels = rearrange(gray, "b (h p) (w q) -> b h w (p q)", p=region, q=region)
    centres = torch.linspace(-1.0, 1.0, bins, device=gray.device, dtype=torch.float32)
    per_image = h * w * bins
    step = max(1, _CHUNK // per_image)
    out = []
    for chunk in pixels.split(step):
        # Gaussian kernel at every bin centre, summed over the region's pixels (constants cancel below)
        density = torch.exp(-0.5 * ((chunk.unsqueeze(-1) - centres) / sigma) ** 2).sum(dim=-2)
        p = density / density.sum(dim=-1, keepdim=True)
        out.append(-torch.special.xlogy(p, p).sum(dim=-1))
    return torch.cat(out)


def grains_from_scores(scores: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Grain per region = number of thresholds its score exceeds (int64, 0 = coarsest)."""
    if not len(thresholds):
        return torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    t = torch.as_tensor(list(thresholds), dtype=scores.dtype, device=scores.device)
    return (scores.unsqueeze(-1) > t).sum(dim=-1)


def default_thresholds(grains: int, bins: int) -> list[float]:
    """Thresholds used until `set_thresholds`: ln(bins) * g / k for g = 1..k-1 (k = 2: half the maximum entropy)."""
    return [math.log(bins) * g / grains for g in range(1, grains)]


def fit_thresholds(scores, grains: int, fine_ratio: float = 0.5) -> list[float]:
    """Dataset thresholds: T_g is the 100 * (1 - r**g) percentile of region scores (r = 0.5, k = 2: the median)."""
    values = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if values.size == 0:
        raise DataError("cannot compute entropy thresholds from zero regions")
    qs = [1.0 - fine_ratio**g for g in range(1, grains)]
    return [float(v) for v in np.quantile(values.ravel(), qs)]


def check_thresholds(thresholds: Sequence[float], grains: int) -> list[float]:
    """Validate k-1 non-decreasing finite thresholds; returns them as floats."""
    values = [float(t) for t in thresholds]
    if len(values) != grains - 1:
        raise D2itError(f"a {grains}-grain coder needs {grains - 1} threshold(s), got {len(values)}")
    if any(not math.isfinite(v) for v in values) or any(a > b for a, b in zip(values, values[1:])):
        raise D2itError(f"thresholds must be finite and non-decreasing, got {values}")
    return values


@attrs.frozen
class EntropyConfig:
    """Options of the `entropy` grain coder."""

    region: int = 16  # pixels per region side (= the coarsest downsampling factor)
    bins: int = 32
    sigma: float = 0.01
    grains: int = 2
    fine_ratio: float = 0.5  # share of regions of grain >= g is fine_ratio**g when thresholds are fitted

    def __attrs_post_init__(self):
        if self.region < 1 or self.bins < 2 or self.sigma <= 0 or self.grains < 1:
            raise ConfigError("entropy coder needs region >= 1, bins >= 2, sigma > 0 and grains >= 1")
        if not 0.0 < self.fine_ratio < 1.0:
            raise ConfigError(f"entropy coder fine_ratio must lie in (0, 1), got {self.fine_ratio}")
        most = self.region.bit_length()  # each grain halves the cell: the finest of a 16-pixel region is 1 pixel at 5
        if self.grains > most:
            raise ConfigError(
                f"grains must be at most {most} for {self.region}-pixel regions (each grain halves the "
                f"cell side down to one pixel), got {self.grains}"
            )


class EntropyCoder(nn.Module):
    """Scores regions by entropy and maps scores to grains with k-1 thresholds."""

    def __init__(self, region: int = 16, bins: int = 32, sigma: float = 0.01, grains: int = 2, fine_ratio: float = 0.5):
        super().__init__()
        self.region, self.bins, self.sigma, self.grains, self.fine_ratio = region, bins, sigma, grains, fine_ratio
        # not a buffer: thresholds live in d2it.json and must not be overwritten by stale weights
        self.thresholds = default_thresholds(grains, bins)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H/region, W/region) region entropies."""
        return region_entropy(images, self.region, self.bins, self.sigma)

    def to_grains(self, scores: torch.Tensor) -> torch.Tensor:
        """Grain map from scores and the current thresholds."""
        return grains_from_scores(scores, self.thresholds)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grain map, scores) of images."""
        scores = self.scores(images)
        return self.to_grains(scores), scores

    def set_thresholds(self, thresholds: Sequence[float]):
        """Replace the k-1 thresholds (e.g. dataset percentiles from `d2it thresholds`)."""
        self.thresholds = check_thresholds(thresholds, self.grains)

    def fit_thresholds(self, scores) -> list[float]:
        """Percentile thresholds for these scores at this coder's fine ratio (not applied)."""
        return fit_thresholds(scores, self.grains, self.fine_ratio)

    def extra_repr(self) -> str:
        return f"region={self.region}, bins={self.bins}, sigma={self.sigma}, grains={self.grains}"


def make_entropy_coder(config: EntropyConfig) -> EntropyCoder:
    """Factory of the `entropy` grain coder."""
    return EntropyCoder(config.region, config.bins, config.sigma, config.grains, config.fine_ratio)
