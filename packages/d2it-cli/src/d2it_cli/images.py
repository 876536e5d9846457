"""Image utilities: tensors to uint8, PNG grids, grain-map overlays, entropy heatmaps and loss plots (Pillow only)."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from d2it.errors import DataError
from d2it.io import atomic_path
from d2it_cli.decode import open_rgb
from d2it_sampling.images import to_uint8 as sampling_uint8

# the paper's grain colours: blue = coarse, red = fine (intermediate grains interpolate)
COARSE_RGB = (40, 90, 255)
FINE_RGB = (255, 40, 40)
# a perceptually ordered dark-to-bright ramp (close to matplotlib's "inferno") for heatmaps
HEAT_RAMP = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    dtype=np.float64,
)
# line colours for the series of a plot
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75), (23, 190, 207)]


# -- conversions ------------------------------------------------------------------------------
def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] (NCHW or CHW) -> uint8 NHWC (HWC), as the ADM evaluation suite stores them."""
    x = torch.as_tensor(images)
    if x.dim() not in (3, 4):
        raise DataError(f"expected an image tensor of 3 or 4 dimensions, got shape {tuple(x.shape)}")
    # the rounding DiT's sample_ddp.py uses: one function, shared with d2it_sampling.Pipeline's PIL images
    return sampling_uint8(x)


def from_uint8(array) -> torch.Tensor:
    """uint8 NHWC (or HWC) -> float NCHW (CHW) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(array)).float() / 127.5 - 1.0
    return x.permute(2, 0, 1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


def _as_rgb_batch(images) -> np.ndarray:
    """Accept float [-1, 1] NCHW tensors or uint8 NHWC arrays; return uint8 NHWC with 3 channels."""
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        images = to_uint8(images)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise DataError(f"expected uint8 NHWC images, got {arr.dtype} of shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise DataError(f"expected 1 or 3 colour channels, got {arr.shape[-1]}")
    return arr


# -- files ------------------------------------------------------------------------------------
def save_png(image, path) -> Path:
    """Write one uint8 HWC image (or a float CHW tensor) as PNG, atomically."""
    if isinstance(image, torch.Tensor) and image.dtype != torch.uint8:
        image = to_uint8(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def load_png(path) -> np.ndarray:
    """Read an image file as uint8 HWC RGB."""
    try:
        return np.asarray(open_rgb(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc})") from None


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile N images into one uint8 HWC grid of `nrow` images per row (default: about square)."""
    arr = _as_rgb_batch(images)
    n, h, w, c = arr.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / ncol)
    out = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        out[y : y + h, x : x + w] = arr[i]
    return out


def save_grid(images, path, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> Path:
    """Tile images (see `make_grid`) and write the grid as PNG."""
    return save_png(make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value), path)


def upscale(images, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of uint8 NHWC (or HWC) images by an integer factor."""
    arr = np.asarray(images)
    if factor <= 1:
        return arr
    axes = (0, 1) if arr.ndim == 3 else (1, 2)
    return arr.repeat(factor, axis=axes[0]).repeat(factor, axis=axes[1])


# -- grain maps ---------------------------------------------------------------------------------
def grain_colours(grains: int) -> np.ndarray:
    """(k, 3) RGB colour per grain: blue for the coarsest, red for the finest, blended in between."""
    if grains <= 1:
        return np.array([COARSE_RGB], dtype=np.float64)
    t = np.linspace(0.0, 1.0, grains)[:, None]
    return (1 - t) * np.array(COARSE_RGB, np.float64) + t * np.array(FINE_RGB, np.float64)


def _region_upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) per-region values -> (N, H, W), each region covering H/h x W/w pixels."""
    n, h, w = maps.shape
    if height % h or width % w:
        raise DataError(f"image size {height}x{width} is not a multiple of the grain grid {h}x{w}")
    return maps.repeat(height // h, axis=1).repeat(width // w, axis=2)


def grain_map_image(grain_maps, size: int, grains: int = 2) -> np.ndarray:
    """Grain maps (N, h, w) as solid colour pictures, uint8 (N, size, size, 3)."""
    maps = np.asarray(torch.as_tensor(grain_maps).cpu().long())
    if maps.ndim == 2:
        maps = maps[None]
    if maps.size and (maps.min() < 0 or maps.max() >= grains):
        raise DataError(f"grain map values must lie in 0..{grains - 1}, got {maps.min()}..{maps.max()}")
    cells = _region_upsample(maps, size, size)
    return grain_colours(grains)[cells].round().astype(np.uint8)


def grain_overlay(images, grain_maps, grains: int = 2, alpha: float = 0.45, borders: bool = True) -> np.ndarray:
    """Blend each region's grain colour over the images (blue coarse, red fine), uint8 NHWC.

    A region covers (image size / grid) pixels per side; with `borders`, region edges are darkened so
    neighbouring regions of one grain stay distinguishable.
    """
    arr = _as_rgb_batch(images)
    maps = np.asarray(torch.as_tensor(grain_maps).cpu().long())
    if maps.ndim == 2:
        maps = maps[None]
    if maps.shape[0] != arr.shape[0]:
        raise DataError(f"{arr.shape[0]} images but {maps.shape[0]} grain maps")
    n, height, width, _ = arr.shape
    colour = grain_map_image(maps, height, grains) if height == width else None
    if colour is None:
        cells = _region_upsample(maps, height, width)
        colour = grain_colours(grains)[cells].round().astype(np.uint8)
    out = (1 - alpha) * arr.astype(np.float64) + alpha * colour.astype(np.float64)
    if borders:
        rh, rw = height // maps.shape[1], width // maps.shape[2]
        if rh >= 4 and rw >= 4:  # skip lines when regions are too small to show them
            out[:, ::rh, :, :] *= 0.55
            out[:, :, ::rw, :] *= 0.55
    return out.round().clip(0, 255).astype(np.uint8)


# -- heatmaps -----------------------------------------------------------------------------------
def heatmap(values, size: int | None = None, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scalar maps (N, h, w) -> uint8 (N, H, W, 3) on a dark-to-bright ramp (low = dark), regions upscaled to `size`."""
    v = np.asarray(torch.as_tensor(values).detach().cpu().double())
    if v.ndim == 2:
        v = v[None]
    lo = float(np.nanmin(v)) if vmin is None else float(vmin)
    hi = float(np.nanmax(v)) if vmax is None else float(vmax)
    t = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    t = np.nan_to_num(t) * (len(HEAT_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(HEAT_RAMP) - 2)
    frac = (t - i)[..., None]
    rgb = (1 - frac) * HEAT_RAMP[i] + frac * HEAT_RAMP[i + 1]
    out = rgb.round().astype(np.uint8)
    if size is not None:
        n, h, w, _ = out.shape
        out = out.repeat(size // h, axis=1).repeat(size // w, axis=2) if size % h == 0 and size % w == 0 else out
        if out.shape[1] != size:
            raise DataError(f"size {size} is not a multiple of the map size {h}x{w}")
    return out


def entropy_heatmap(entropy, size: int | None = None, vmax: float | None = None) -> np.ndarray:
    """Per-region entropy maps (N, h, w) as heatmaps from 0 (dark) to `vmax` (bright; default the maximum)."""
    return heatmap(entropy, size=size, vmin=0.0, vmax=vmax)


# -- labelled panels ----------------------------------------------------------------------------
def _font():
    return ImageFont.load_default()


def label_image(image, text: str, height: int = 14, background: int = 255) -> np.ndarray:
    """Add a caption strip with `text` above a uint8 HWC image."""
    arr = np.asarray(image)
    canvas = Image.new("RGB", (arr.shape[1], arr.shape[0] + height), (background,) * 3)
    canvas.paste(Image.fromarray(arr), (0, height))
    ImageDraw.Draw(canvas).text((2, 1), text, fill=(0, 0, 0), font=_font())
    return np.asarray(canvas)


def hstack(images: Sequence, gap: int = 4, background: int = 255) -> np.ndarray:
    """Place uint8 HWC images side by side (top-aligned) with `gap` pixels between them."""
    arrs = [np.asarray(a) for a in images]
    h = max(a.shape[0] for a in arrs)
    w = sum(a.shape[1] for a in arrs) + gap * (len(arrs) - 1)
    out = np.full((h, w, 3), background, np.uint8)
    x = 0
    for a in arrs:
        out[: a.shape[0], x : x + a.shape[1]] = a if a.ndim == 3 else a[..., None]
        x += a.shape[1] + gap
    return out


def vstack(images: Sequence, gap: int = 4, background: int = 255) -> np.ndarray:
    """Place uint8 HWC images one above the other (left-aligned)."""
    arrs = [np.asarray(a) for a in images]
    w = max(a.shape[1] for a in arrs)
    h = sum(a.shape[0] for a in arrs) + gap * (len(arrs) - 1)
    out = np.full((h, w, 3), background, np.uint8)
    y = 0
    for a in arrs:
        out[y : y + a.shape[0], : a.shape[1]] = a if a.ndim == 3 else a[..., None]
        y += a.shape[0] + gap
    return out


# -- loss curves --------------------------------------------------------------------------------
def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average (TensorBoard-style, bias-corrected)."""
    out, ema, norm = [], 0.0, 0.0
    for v in values:
        ema = weight * ema + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(ema / norm if norm else v)
    return out


def plot_curves(
    series: Mapping[str, Sequence] | Sequence,
    path=None,
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    log_y: bool = False,
    smoothing: float = 0.0,
    size: tuple[int, int] = (560, 340),
) -> np.ndarray:
    """Line plot of series ({name: values or [(x, y), ...]}) drawn with Pillow; written as PNG when `path` is given."""
    if not isinstance(series, Mapping):
        series = {ylabel: series}
    lines = {}
    for name, values in series.items():
        pts = list(values)
        if pts and not isinstance(pts[0], (tuple, list)):
            pts = list(enumerate(pts))
        xs = [float(p[0]) for p in pts]
        ys = [float(p[1]) for p in pts]
        if smoothing > 0:
            ys = smooth(ys, smoothing)
        keep = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
        if keep:
            lines[name] = keep
    width, height = size
    left, right, top, bottom = 62, 14, 26 if title else 12, 38
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = _font()
    pw, ph = width - left - right, height - top - bottom
    draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    if title:
        draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    if not lines:
        draw.text((left + 8, top + ph // 2), "no data", fill=(120, 120, 120), font=font)
    else:

        def ty(v):
            return math.log10(v) if log_y else v

        all_x = [x for pts in lines.values() for x, _ in pts]
        all_y = [ty(y) for pts in lines.values() for _, y in pts]
        x0, x1 = min(all_x), max(all_x)
        y0, y1 = min(all_y), max(all_y)
        if x1 == x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def px(x):
            return left + (x - x0) / (x1 - x0) * pw

        def py(y):
            return top + ph - (ty(y) - y0) / (y1 - y0) * ph

        for t in _nice_ticks(x0, x1):
            x = px(t)
            draw.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
            draw.line([x, top, x, top + ph], fill=(235, 235, 235))
            label = _fmt(t)
            draw.text((x - 3 * len(label), top + ph + 6), label, fill=(0, 0, 0), font=font)
        if log_y and y1 - y0 < 1.5:  # under about a decade: round values, placed on the log axis
            ticks = [math.log10(v) for v in _nice_ticks(10**y0, 10**y1) if v > 0]
        else:
            ticks = _nice_ticks(y0, y1)
        for t in ticks:
            value = 10**t if log_y else t
            y = top + ph - (t - y0) / (y1 - y0) * ph
            draw.line([left - 4, y, left, y], fill=(0, 0, 0))
            draw.line([left, y, left + pw, y], fill=(235, 235, 235))
            label = _fmt(value)
            draw.text((left - 6 - 6 * len(label), y - 5), label, fill=(0, 0, 0), font=font)
        draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
        for i, (name, pts) in enumerate(lines.items()):
            colour = PALETTE[i % len(PALETTE)]
            xy = [(px(x), py(y)) for x, y in pts]
            if len(xy) == 1:
                x, y = xy[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            else:
                draw.line(xy, fill=colour, width=2)
            # legend, top right
            ly = top + 6 + 13 * i
            lx = left + pw - 8 - 6 * len(name) - 18
            draw.line([lx, ly + 6, lx + 14, ly + 6], fill=colour, width=2)
            draw.text((lx + 18, ly), name, fill=(0, 0, 0), font=font)
    draw.text((left + pw // 2 - 3 * len(xlabel), height - 14), xlabel, fill=(0, 0, 0), font=font)
    ytext = ylabel + (" (log scale)" if log_y else "")
    label = Image.new("RGB", (6 * len(ytext) + 4, 12), (255, 255, 255))
    ImageDraw.Draw(label).text((1, 0), ytext, fill=(0, 0, 0), font=font)
    label = label.rotate(90, expand=True)
    im.paste(label, (2, max(0, top + ph // 2 - label.height // 2)))
    arr = np.asarray(im)
    if path is not None:
        save_png(arr, path)
    return arr
