"""Image sets for evaluation: PNG/JPEG folders and ADM-style .npz files, served as uint8 CHW tensors."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torch_fidelity.utils import glob_samples_paths

from d2it.errors import DataError
from d2it_cli.data.folder import center_crop
from d2it_cli.decode import to_rgb
from d2it_cli.npz import load_npz

IMAGE_EXTS = "png,jpg,jpeg"
RESIZE_POLICIES = ("none", "center-crop")
NPZ_KEY = "arr_0"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class ImageSet(Dataset):
    """A fixed set of RGB images (a folder or an ADM .npz), each item a uint8 (3, H, W) tensor."""

    def __init__(self, path, kind, count, image_size, files=(), array=None, resize="none", extra=None):
        self.path = str(path)
        self.kind = kind
        self.count = count
        self.image_size = tuple(image_size)  # (H, W) of the items served
        self.files = list(files)
        self.array = array
        self.resize = resize
        self.extra = dict(extra or {})  # e.g. ADM reference statistics found in the .npz

    def __len__(self):
        return self.count

    def _crop(self, image: Image.Image) -> np.ndarray:
        if self.resize == "center-crop":
            return np.asarray(center_crop(image, self.image_size[0]))
        return np.asarray(image)

    def __getitem__(self, i):
        if self.array is not None:
            arr = self.array[i]
            if self.resize != "none":
                arr = self._crop(Image.fromarray(arr))
        else:
            path = self.files[i]
            try:
                with Image.open(path) as im:
                    arr = self._crop(to_rgb(im, path))
            except _PIL_ERRORS as exc:
                raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from None
            if arr.shape[:2] != self.image_size:
                raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but the other images are {self._size_text()}")
        return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)

    def _size_text(self) -> str:
        return f"{self.image_size[1]}x{self.image_size[0]}"

    def describe(self) -> dict:
        """What these images are: kind, path, how many, size, resize policy."""
        return {
            "kind": self.kind,
            "path": os.path.abspath(self.path),
            "count": self.count,
            "image_size": list(self.image_size),
            "resize": self.resize,
        }


def _check_policy(resize, image_size):
    if resize not in RESIZE_POLICIES:
        raise DataError(f"unknown resize policy {resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
    if resize == "center-crop" and not image_size:
        raise DataError("resize policy 'center-crop' needs --image-size")


def _take(total: int, num: int | None, path, what: str) -> int:
    if num is None:
        if total == 0:
            raise DataError(f"{path} holds no images")
        return total
    if total < num:
        raise DataError(f"{path} holds {total} {what}, fewer than the {num} requested (--num)")
    return num


def open_npz(path, num=None, resize="none", image_size=None) -> ImageSet:
    """An ADM-style .npz (key arr_0: uint8 NHWC RGB); ADM reference batches' mu/sigma are kept in `extra`."""
    _check_policy(resize, image_size)
    data = load_npz(path)
    keys = list(data)
    if NPZ_KEY not in keys:
        raise DataError(f"{path} has no array {NPZ_KEY!r} (ADM layout); it has {', '.join(keys) or 'none'}")
    arr = data[NPZ_KEY]
    extra = {k: np.asarray(data[k]) for k in ("mu", "sigma") if k in keys}
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: {NPZ_KEY} has dtype {arr.dtype}; expected uint8 images in [0, 255], NHWC")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        hint = ", which looks channels-first" if arr.ndim == 4 and arr.shape[1] == 3 else ""
        raise DataError(f"{path}: {NPZ_KEY} has shape {tuple(arr.shape)}{hint}; expected (N, H, W, 3) RGB (NHWC)")
    count = _take(arr.shape[0], num, path, "images")
    arr = arr[:count]
    size = (image_size, image_size) if resize == "center-crop" else arr.shape[1:3]
    return ImageSet(path, "npz", count, size, array=arr, resize=resize, extra=extra)


def open_folder(path, num=None, resize="none", image_size=None) -> ImageSet:
    """PNG/JPEG files under a folder (recursively, sorted by path); with resize 'none' all must share one size."""
    _check_policy(resize, image_size)
    files = glob_samples_paths(str(path), True, IMAGE_EXTS, verbose=False)
    count = _take(len(files), num, path, "images")
    files = files[:count]
    if resize == "center-crop":
        size = (image_size, image_size)
    else:
        size = None
        for f in files:  # headers only: corrupt files and mixed sizes fail before any network runs
            try:
                with Image.open(f) as im:
                    wh = im.size
            except _PIL_ERRORS as exc:
                raise DataError(f"{f} is not a readable image ({type(exc).__name__}: {exc})") from None
            if size is None:
                size, first = (wh[1], wh[0]), f
            elif (wh[1], wh[0]) != size:
                raise DataError(
                    f"images in {path} have different sizes ({first} is {size[1]}x{size[0]}, {f} is "
                    f"{wh[0]}x{wh[1]}); pass --resize center-crop --image-size N"
                )
    return ImageSet(path, "folder", count, size, files=files, resize=resize)


def open_images(path, num=None, resize="none", image_size=None) -> ImageSet:
    """A folder or an .npz file of images."""
    p = Path(path)
    if p.is_dir():
        return open_folder(p, num, resize, image_size)
    if p.is_file() and p.suffix.lower() == ".npz":
        return open_npz(p, num, resize, image_size)
    if not p.exists():
        raise DataError(f"{path} does not exist")
    raise DataError(f"{path} is neither a folder of images nor an .npz file")
