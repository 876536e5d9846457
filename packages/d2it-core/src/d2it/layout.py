"""Grain layout: grain maps, neighbour copying and multi-grained noise on the finest (cell) grid.

Grain g = 0 is the coarsest of k grains. A grain-map entry covers one region, the area of one
coarsest code; a code of grain g covers 2**(k-1-g) x 2**(k-1-g) cells of the finest latent grid.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def unit_cells(grain: int, grains: int) -> int:
    """Side length, in finest cells, of one code of `grain`."""
    return 2 ** (grains - 1 - grain)


def cell_grain(grain_map: torch.Tensor, grains: int) -> torch.Tensor:
    """The grain of every finest cell: (B, h, w) region map -> (B, h*s, w*s) with s = 2**(k-1)."""
    s = unit_cells(0, grains)
    return grain_map.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)


def grain_masks(grain_map: torch.Tensor, grains: int, dtype=torch.float32) -> torch.Tensor:
    """One-hot grain per cell: (B, k, H, W) with H, W the finest grid."""
    cells = cell_grain(grain_map, grains)
    return F.one_hot(cells.long(), grains).permute(0, 3, 1, 2).to(dtype)


def upsample_codes(codes: torch.Tensor, grain: int, grains: int) -> torch.Tensor:
    """Copy each code of `grain` to the finest cells it covers (nearest-neighbour upsampling)."""
    s = unit_cells(grain, grains)
    return codes if s == 1 else codes.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)


def pool_codes(x: torch.Tensor, grain: int, grains: int) -> torch.Tensor:
    """Average finest-grid values over each code of `grain`: the inverse of `upsample_codes`."""
    s = unit_cells(grain, grains)
    return x if s == 1 else F.avg_pool2d(x, s)


def neighbour_copy(latents: Sequence[torch.Tensor], grain_map: torch.Tensor) -> torch.Tensor:
    """Combine per-grain latents (coarsest first) into one finest-grid latent, as the DVAE does."""
    grains = len(latents)
    masks = grain_masks(grain_map, grains, latents[-1].dtype)
    out = torch.zeros_like(upsample_codes(latents[0], 0, grains))
    for g, codes in enumerate(latents):
        out = out + masks[:, g : g + 1] * upsample_codes(codes, g, grains)
    return out


def project_to_layout(x: torch.Tensor, grain_map: torch.Tensor, grains: int) -> torch.Tensor:
    """Make any finest-grid tensor obey the layout: each code's cells take the code's mean."""
    return neighbour_copy([pool_codes(x, g, grains) for g in range(grains)], grain_map)


def multigrain_noise(
    grain_map: torch.Tensor,
    grains: int,
    channels: int,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Standard normal noise in the grain layout: one draw per code, copied to its cells."""
    b, h, w = grain_map.shape
    draws = []
    for g in range(grains):
        n = 2**g  # codes per region side at grain g
        draws.append(torch.randn(b, channels, h * n, w * n, generator=generator, device=grain_map.device, dtype=dtype))
    return neighbour_copy(draws, grain_map)


def grain_cell_counts(grain_map: torch.Tensor, grains: int) -> torch.Tensor:
    """Finest-grid cells of each grain over a batch of grain maps: (k,) float32."""
    return grain_masks(grain_map, grains).sum(dim=(0, 2, 3))


def per_grain_mean(values: torch.Tensor, grain_map: torch.Tensor, grains: int, counts=None) -> torch.Tensor:
    """Mean of a finest-grid tensor over the cells of each grain: (k,), 0 where a grain is absent.

    `counts` (k,): the cell counts to divide by instead of this batch's, e.g. a micro-batch's share
    of a whole global batch's counts, so that the mean is over the global batch.
    """
    masks = grain_masks(grain_map, grains, values.dtype)  # (B, k, H, W)
    per_cell = values.mean(dim=1, keepdim=True)  # average channels first
    sums = (per_cell * masks).sum(dim=(0, 2, 3))
    if counts is None:
        return sums / masks.sum(dim=(0, 2, 3)).clamp(min=1)
    counts = counts.to(sums)
    return sums / torch.where(counts > 0, counts, torch.ones_like(counts))


def fine_ratio(grain_maps):
    """Share of regions finer than the coarsest grain (grain > 0): the r of the entropy thresholds.

    A 0-d float tensor for a tensor (no host sync), a float for a numpy array.
    """
    if isinstance(grain_maps, torch.Tensor):
        return (grain_maps > 0).float().mean()
    return float((np.asarray(grain_maps) > 0).mean())
