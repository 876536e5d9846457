"""Decoding image files into 8-bit RGB the same way everywhere: EXIF rotation, 16-bit, palette, CMYK and alpha.

Pillow's bare `convert("RGB")` clips 16-bit grey to white, drops transparency onto whatever colour
the hidden pixels hold and ignores the camera's EXIF orientation. `to_rgb` handles each case:

- EXIF orientation is applied (as a viewer shows the photo);
- 16-bit and 32-bit integer grey ("I;16", "I") is scaled to 8 bits, float grey ("F") clipped;
- palette images use their palette (and transparency, when they have it);
- CMYK (and YCbCr, LAB, HSV) go through Pillow's conversion to RGB;
- transparent pixels are composited onto white.
"""

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from d2it.errors import DataError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _grey_to_l(image: Image.Image) -> Image.Image:
    arr = np.asarray(image)
    if image.mode in SIXTEEN_BIT or (image.mode == "I" and arr.size and int(arr.max()) <= 65535 and arr.min() >= 0):
        arr = (arr.astype(np.float64) / 257.0).round()
    elif image.mode == "I":
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / max(hi - lo, 1.0))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _composite(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if alpha.min() == 255:
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image, path=None) -> Image.Image:
    """An opened image as 8-bit RGB (see the module docstring); an unsupported mode raises DataError."""
    try:
        image = ImageOps.exif_transpose(image)
    except (ValueError, TypeError, OSError, SyntaxError):  # a damaged EXIF block: keep the pixels as stored
        pass
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT or mode in ("I", "F"):
        return _grey_to_l(image).convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA"
        return _composite(image) if has_alpha else image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite(image)
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise DataError(f"image {path or ''} has pixel mode {mode!r}, which d2it cannot read as RGB".replace("  ", " "))


def open_rgb(source, name=None) -> Image.Image:
    """Open and fully decode an image file (a path or a binary file object, called `name` in errors) as 8-bit RGB.

    The one decoder of every data route (folder, `wds:`, `hf:`), so the same file gives the same pixels.
    """
    name = source if name is None else name
    try:
        im = Image.open(source)
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"{name} is not an image file Pillow can identify") from None
    with im:
        im.load()
        return to_rgb(im, name)
