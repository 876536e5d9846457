"""The `synthetic` dataset: procedural images mixing smooth and detailed regions, deterministic per index.

Each image is a recursive split of the canvas into a handful of rectangles on a grid of a quarter
of the image side (so at 64x64 every rectangle covers whole 16x16 regions). A smooth rectangle
holds a flat colour or a very gentle linear gradient (one or two grey levels per region); a
detailed one holds a pattern of strong brightness contrast in its own hue at a moderate period (an
eighth to a fifth of the image side): sine stripes at one of four angles, a four-level
checkerboard, soft dots or concentric rings. Patterns have many grey levels, so detail coincides
with high region entropy, yet they are regular enough for a small autoencoder to reconstruct and a
small generator to imitate (no per-pixel noise). The class chooses the palette (hue), the
preferred pattern and how much of the image is detailed, so class-conditional models have
something to learn. `detail_mask(index)` tells where the detail is.
"""

import attrs
import numpy as np
import torch

from d2it.errors import DataError
from d2it_cli.data.folder import random_flip

TEXTURES = ("stripes", "checker", "dots", "rings")


@attrs.frozen
class SyntheticConfig:
    """Options of the `synthetic` dataset."""

    num_images: int = 1000
    num_classes: int = 4
    seed: int = 0
    detail_ratio: float = 0.5  # probability that a rectangle is detailed


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) as RGB in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _split(rng, box, depth, unit, out):
    """Recursively split box (y0, x0, y1, x1) at multiples of `unit` pixels."""
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    can_y, can_x = h >= 2 * unit, w >= 2 * unit
    if depth == 0 or not (can_y or can_x) or (depth < 3 and rng.random() < 0.25):
        out.append(box)
        return
    horizontal = can_y and (not can_x or rng.random() < 0.5)
    if horizontal:
        cut = y0 + unit * int(rng.integers(1, h // unit))
        _split(rng, (y0, x0, cut, x1), depth - 1, unit, out)
        _split(rng, (cut, x0, y1, x1), depth - 1, unit, out)
    else:
        cut = x0 + unit * int(rng.integers(1, w // unit))
        _split(rng, (y0, x0, y1, cut), depth - 1, unit, out)
        _split(rng, (y0, cut, y1, x1), depth - 1, unit, out)


class SyntheticDataset(torch.utils.data.Dataset):
    """`num_images` procedural RGB images of `image_size` pixels with labels `index % num_classes`."""

    def __init__(self, image_size: int, train: bool = True, config: SyntheticConfig | None = None):
        config = config or SyntheticConfig()
        if config.num_images < 1:
            raise DataError(f"the synthetic dataset needs at least one image, got num_images={config.num_images}")
        if config.num_classes < 1:
            raise DataError(f"the synthetic dataset needs at least one class, got num_classes={config.num_classes}")
        if image_size < 8:
            raise DataError(f"synthetic images must be at least 8 pixels wide, got {image_size}")
        self.image_size = int(image_size)
        self.train = train
        self.config = config
        self.classes = [f"class{c}" for c in range(config.num_classes)]

    @property
    def num_classes(self) -> int:
        """Number of labels."""
        return self.config.num_classes

    def __len__(self) -> int:
        return self.config.num_images

    def label(self, index: int) -> int:
        """The class of image `index`."""
        return index % self.config.num_classes

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 HWC in [0, 1], detail mask bool HW) of image `index`."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        size, cls = self.image_size, self.label(index)
        rng = np.random.default_rng([self.config.seed, index])
        hue = (cls / self.config.num_classes + 0.04 * rng.standard_normal()) % 1.0
        preferred = TEXTURES[cls % len(TEXTURES)]
        unit = max(4, size // 4)
        # classes differ in how much detail they hold (0.6 to 1.4 times detail_ratio, the average)
        k = self.config.num_classes
        detail_ratio = self.config.detail_ratio * (0.6 + 0.8 * cls / (k - 1) if k > 1 else 1.0)
        boxes: list = []
        _split(rng, (0, 0, size, size), 3, unit, boxes)
        image = np.zeros((size, size, 3), np.float32)
        detail = np.zeros((size, size), bool)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        for y0, x0, y1, x1 in boxes:
            ys, xs = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
            c1 = _hsv_to_rgb((hue + 0.06 * rng.standard_normal()) % 1.0, rng.uniform(0.4, 0.9), rng.uniform(0.35, 1.0))
            if rng.random() < detail_ratio:
                texture = preferred if rng.random() < 0.7 else TEXTURES[int(rng.integers(len(TEXTURES)))]
                period = size * float(rng.uniform(1 / 8, 1 / 5))
                # the same hue at a strongly different brightness (so a textured area keeps the class colour),
                # patterns of many grey levels: high entropy
                c2 = c1 * 0.25 if c1.max() > 0.6 else np.clip(c1 * 2.5 + 0.2, 0.0, 1.0)
                if texture == "stripes":
                    angle = np.pi / 4 * int(rng.integers(4))
                    phase = (np.cos(angle) * xs + np.sin(angle) * ys) / period + rng.random()
                    t = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
                elif texture == "checker":
                    p = max(2, int(round(period / 2)))
                    t = (((ys - y0) // p) + 2 * ((xs - x0) // p)) % 4 / 3.0
                elif texture == "dots":
                    p = max(3, int(round(period)))
                    dy, dx = ((ys - y0) % p) - p / 2 + 0.5, ((xs - x0) % p) - p / 2 + 0.5
                    t = np.clip(1.0 - np.sqrt(dy * dy + dx * dx) / (p / 2), 0.0, 1.0)
                else:
                    r = np.sqrt((ys - (y0 + y1 - 1) / 2) ** 2 + (xs - (x0 + x1 - 1) / 2) ** 2)
                    t = 0.5 + 0.5 * np.cos(2 * np.pi * r / period)
                detail[y0:y1, x0:x1] = True
            else:
                # a flat colour or a very gentle gradient: one or two grey levels per region, so low entropy
                c2 = np.clip(c1 + rng.uniform(-0.03, 0.03, 3), 0.0, 1.0)
                if rng.random() < 0.5:
                    t = np.zeros_like(ys)
                else:
                    angle = rng.uniform(0, 2 * np.pi)
                    proj = np.cos(angle) * (xs - x0) + np.sin(angle) * (ys - y0)
                    t = (proj - proj.min()) / max(1.0, float(np.ptp(proj)))
            image[y0:y1, x0:x1] = (1 - t[..., None]) * c1 + t[..., None] * c2
        return np.clip(image, 0.0, 1.0), detail

    def detail_mask(self, index: int) -> np.ndarray:
        """Boolean (H, W) map of the pixels covered by a detailed texture (unflipped)."""
        return self.render(index)[1]

    def __getitem__(self, index: int):
        image, _ = self.render(int(index))
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous() * 2.0 - 1.0
        if self.train:
            x = random_flip(x)
        return x, self.label(int(index))


def make_synthetic(config: SyntheticConfig, *, root=None, image_size: int, train: bool = True) -> SyntheticDataset:
    """Registry factory of the `synthetic` dataset (`root` is ignored)."""
    return SyntheticDataset(image_size, train=train, config=config)
