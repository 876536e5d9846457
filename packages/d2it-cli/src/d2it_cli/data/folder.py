"""The `folder` dataset: an ImageFolder tree (one subfolder per class) or a flat folder of PNG/JPEG files."""

import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from d2it.errors import DataError

log = logging.getLogger("d2it.data")

EXTENSIONS = (".png", ".jpg", ".jpeg")


@attrs.frozen
class FolderConfig:
    """Options of the `folder` dataset."""

    strict: bool = False  # fail on the first unreadable image instead of skipping it
    extensions: tuple[str, ...] = EXTENSIONS
    check_workers: int = 8  # threads that open every file's header when the folder is scanned


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: box-downsample while the short side is at least 2x, bicubic resize, then crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float CHW tensor in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip a CHW image horizontally with probability 0.5 (torch's global generator)."""
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def _images_under(directory: Path, extensions) -> list[Path]:
    """Image files under `directory`, recursively, in sorted order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(extensions) and not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def _header_ok(path: Path) -> str | None:
    """None when Pillow recognises the file's header, else the reason."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - forces the header to be parsed
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


class FolderDataset(torch.utils.data.Dataset):
    """Images under `root`: class subfolders (labels in sorted order) or a flat folder (label 0)."""

    def __init__(self, root, image_size: int, train: bool = True, config: FolderConfig | None = None):
        config = config or FolderConfig()
        self.root = Path(root)
        self.image_size = int(image_size)
        self.train = train
        self.strict = config.strict
        extensions = tuple(e.lower() for e in config.extensions)
        if not self.root.exists():
            raise DataError(f"data directory {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is not a directory")
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = [(d.name, _images_under(d, extensions)) for d in subdirs]
        per_class = [(name, files) for name, files in per_class if files]
        if per_class:
            self.classes = [name for name, _ in per_class]
            candidates = [(f, label) for label, (_, files) in enumerate(per_class) for f in files]
        else:
            self.classes = []
            candidates = [
                (f, 0)
                for f in sorted(
                    p
                    for p in self.root.iterdir()
                    if p.is_file() and p.name.lower().endswith(extensions) and not p.name.startswith(".")
                )
            ]
        if not candidates:
            raise DataError(f"no PNG or JPEG images found in {self.root}")
        self.skipped: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=max(1, config.check_workers)) as pool:
            checks = pool.map(lambda c: _header_ok(c[0]), candidates)
            hide = not sys.stdout.isatty() or len(candidates) < 10_000  # a bar only for big folders
            problems = list(tqdm(checks, total=len(candidates), desc=f"scan {self.root.name}", disable=hide))
        self.samples = []
        for (path, label), problem in zip(candidates, problems):
            if problem is None:
                self.samples.append((path, label))
                continue
            if self.strict:
                raise DataError(f"image {path} cannot be read ({problem})")
            self.skipped.append((str(path), problem))
        if self.skipped:
            log.warning(
                "skipped %d unreadable image(s) of %d in %s (first: %s)",
                len(self.skipped),
                len(candidates),
                self.root,
                self.skipped[0][0],
            )
        if not self.samples:
            raise DataError(f"none of the {len(candidates)} images in {self.root} can be read")

    @property
    def num_classes(self) -> int:
        """Number of labels (1 for a flat folder)."""
        return max(1, len(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The image at `index`, resized and centre-cropped, in [-1, 1] (no flip)."""
        path, _ = self.samples[index]
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
        return to_tensor(center_crop(image, self.image_size))

    def __getitem__(self, index: int):
        n = len(self.samples)
        for offset in range(n):
            i = (index + offset) % n
            try:
                x = self.load(i)
            except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
                path = self.samples[i][0]
                if self.strict:
                    raise DataError(f"image {path} cannot be decoded ({exc})") from None
                if str(path) not in {p for p, _ in self.skipped}:
                    self.skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
                    log.warning(
                        "skipped corrupt image %s (%s); %d skipped so far in this process", path, exc, len(self.skipped)
                    )
                continue
            if self.train:
                x = random_flip(x)
            return x, self.samples[i][1]
        raise DataError(f"none of the images in {self.root} can be decoded")


def make_folder(config: FolderConfig, *, root, image_size: int, train: bool = True) -> FolderDataset:
    """Registry factory of the `folder` dataset."""
    if root is None:
        raise DataError("the folder dataset needs a data directory")
    return FolderDataset(root, image_size, train=train, config=config)
