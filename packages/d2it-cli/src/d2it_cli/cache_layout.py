"""How the latent cache stores posterior parameters: every grain everywhere (`all`) or each region's own (`used`).

`all` keeps, per grain g, the parameters on g's whole grid: a latent can then be laid out for any
grain map (the `--grain-source random` ablation). `used` keeps, for each region, only the
parameters of its own grain: per grain g a table `used.<g>` of rows (one row per region coded at g,
its f_g x f_g cells' P channels; f_g = cells per region side) in (item, version, raster) order, and
`count.<g>` (n, versions) rows per image version. About half of `all` at a fine ratio of 0.5 for
two grains; the random-grain ablation cannot be trained from it.
"""

import torch
from einops import rearrange

MODES = ("all", "used")


def cells_per_region(param: torch.Tensor, grain_map: torch.Tensor) -> int:
    """f_g: grid cells per region side of one grain's parameters (…, P, h_g, w_g) over the map (…, h, w)."""
    return param.shape[-1] // grain_map.shape[-1]


def pack_used(params: list[torch.Tensor], grain_map: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-grain rows of the used parameters: params[g] (B, P, h_g, w_g), grain_map (B, h, w) -> used.<g>, count.<g>."""
    out = {}
    for g, p in enumerate(params):
        f = cells_per_region(p, grain_map)
        rows = rearrange(p, "b c (h f1) (w f2) -> b h w (c f1 f2)", f1=f, f2=f)
        mask = grain_map == g
        out[f"used.{g}"] = rows[mask]
        out[f"count.{g}"] = mask.flatten(1).sum(1)
    return out


def unpack_used(rows: list[torch.Tensor], grain_map: torch.Tensor, shapes: list[list[int]]) -> list[torch.Tensor]:
    """Inverse of `pack_used` for one image version: rows[g] (n_g, P f f), grain_map (h, w) -> params (P, h_g, w_g).

    Regions of another grain hold zeros there (never read: the copied layout takes each region's own grain).
    """
    h, w = grain_map.shape
    out = []
    for g, (r, shape) in enumerate(zip(rows, shapes)):
        channels, f = shape[0], shape[-1] // w
        grid = torch.zeros(h, w, channels * f * f, dtype=r.dtype)
        grid[grain_map == g] = r
        out.append(rearrange(grid, "h w (c f1 f2) -> c (h f1) (w f2)", f1=f, f2=f))
    return out


def bytes_per_image(
    shapes: list[list[int]], grid: list[int], layout: str, dtype_bytes: int, fine_share: float
) -> float:
    """Cache bytes per image with its flip: parameters (all grains or each region's own), grain map, label."""
    regions = grid[0] * grid[1]
    sizes = [s[0] * s[1] * s[2] for s in shapes]  # values per grain over the whole grid
    if layout == "all":
        values = sum(sizes)
    else:  # two or more grains: the finest at `fine_share` of the regions, the coarsest at the rest
        share = [1.0 - fine_share] + [0.0] * (len(sizes) - 2) + [fine_share] if len(sizes) > 1 else [1.0]
        values = sum(s * w for s, w in zip(sizes, share))
    return 2 * (values * dtype_bytes + regions) + 16  # x2 versions; uint8 grain map; label + index


def human(n: float) -> str:
    """Bytes as '81.9 KB' / '105 GB' (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"
