"""The `folder` dataset: an ImageFolder tree (one subfolder per class) or a flat folder of PNG/JPEG/WebP files.

Start-up is directory listing only: no image is opened until it is read (an unreadable one is then
skipped, counted and replaced by the next readable one), and under torchrun rank 0 lists the tree
once and sends the index to the other ranks.
"""

import logging
import os
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image

from d2it.errors import DataError
from d2it_cli.decode import open_rgb

log = logging.getLogger("d2it.data")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@attrs.frozen
class FolderConfig:
    """Options of the `folder` dataset."""

    strict: bool = False  # fail on the first unreadable image instead of skipping it
    extensions: tuple[str, ...] = EXTENSIONS


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


def _images_under(directory: str, extensions, prefix: str = "", _above: tuple = ()) -> list[str]:
    """Image files under `directory`, recursively, sorted, as paths relative to the listed root (os.scandir only)."""
    real = os.path.realpath(directory)
    if real in _above:  # a symbolic link back to a folder above: the walk would never end
        raise DataError(f"{directory} is a symbolic link loop (it leads back to {real}); remove the link")
    _above = (*_above, real)
    files, dirs = [], []
    with os.scandir(directory) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=True):
                dirs.append(e.name)
            elif e.name.lower().endswith(extensions):
                files.append(e.name)
    out = [prefix + name for name in sorted(files)]
    for name in sorted(dirs):
        out.extend(_images_under(os.path.join(directory, name), extensions, prefix + name + "/", _above))
    return out


def scan_folder(root: Path, extensions) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths relative to root, labels): class subfolders, else the flat folder's own images."""
    classes, files, labels = [], [], []
    subdirs = sorted(p.name for p in os.scandir(root) if p.is_dir() and not p.name.startswith("."))
    for name in subdirs:
        found = _images_under(os.path.join(root, name), extensions, name + "/")
        if found:
            labels.extend([len(classes)] * len(found))
            classes.append(name)
            files.extend(found)
    if not classes:
        with os.scandir(root) as entries:
            files = sorted(
                e.name
                for e in entries
                if e.is_file() and e.name.lower().endswith(extensions) and not e.name.startswith(".")
            )
        labels = [0] * len(files)
    return classes, files, labels


def _shared_scan(root: Path, extensions):
    """`scan_folder` on rank 0 only, broadcast to every rank under torchrun (one listing per launch, not per rank)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return scan_folder(root, extensions)
    box = [scan_folder(root, extensions) if torch_dist.get_rank() == 0 else None]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


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
        self.classes, self.files, labels = _shared_scan(self.root, extensions)
        self.labels = np.asarray(labels, dtype=np.int64)
        if not self.files:
            raise DataError(f"no PNG, JPEG or WebP images found in {self.root}")
        self.skipped: list[tuple[str, str]] = []

    @property
    def samples(self) -> list[tuple[Path, int]]:
        """(path, label) of every listed image (built on demand: the index itself is compact)."""
        return [(self.root / f, int(label)) for f, label in zip(self.files, self.labels)]

    def path(self, index: int) -> Path:
        """The file of image `index`."""
        return self.root / self.files[index]

    @property
    def num_classes(self) -> int:
        """Number of labels (1 for a flat folder)."""
        return max(1, len(self.classes))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """The image at `index`, resized and centre-cropped, in [-1, 1] (no flip)."""
        path = self.path(index)
        image = open_rgb(path)  # EXIF rotation, 16-bit, palette, CMYK and alpha handled
        return to_tensor(center_crop(image, self.image_size))

    def __getitem__(self, index: int):
        n = len(self.files)
        for offset in range(n):
            i = (index + offset) % n
            try:
                x = self.load(i)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # corrupt image data
                path = self.path(i)
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
            return x, int(self.labels[i])
        raise DataError(f"none of the {n} images in {self.root} can be read")


def make_folder(config: FolderConfig, *, root, image_size: int, train: bool = True) -> FolderDataset:
    """Registry factory of the `folder` dataset."""
    if root is None:
        raise DataError("the folder dataset needs a data directory")
    return FolderDataset(root, image_size, train=train, config=config)
