"""Image decoding: 16-bit, palette, CMYK, EXIF rotation and alpha read as a viewer shows them; symlink loops."""

import numpy as np
import pytest
from PIL import Image

from d2it.errors import DataError
from d2it_cli.data.folder import FolderDataset
from d2it_cli.decode import open_rgb


def test_16_bit_grey_png_is_scaled_not_white(tmp_path):
    arr = np.full((8, 8), 32896, np.uint16)  # half of 65535
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")
    rgb = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert rgb.shape == (8, 8, 3) and np.all(rgb == 128)


def test_palette_png_with_transparency_composites_on_white(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0  # index 0 (red) is transparent
    im.save(tmp_path / "p.png", transparency=0)
    rgb = np.asarray(open_rgb(tmp_path / "p.png"))
    assert tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_rgba_alpha_composited_and_opaque_kept(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 200
    arr[0, 0, 3] = 255  # opaque red pixel, the rest fully transparent
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(open_rgb(tmp_path / "a.png"))
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red in CMYK
    rgb = np.asarray(open_rgb(tmp_path / "c.jpg")).astype(int)
    assert rgb.shape == (8, 8, 3) and rgb[..., 0].mean() > 200 and rgb[..., 1:].mean() < 60


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (6, 3), (0, 0, 0))
    im.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    rgb = np.asarray(open_rgb(tmp_path / "r.jpg"))
    assert rgb.shape[:2] == (6, 3)  # displayed upright: portrait
    assert rgb[0, -1].mean() > 200  # the top-left pixel went to the top-right corner


def test_symlink_loop_in_image_folder_is_an_error(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "a.png")
    (tmp_path / "cls" / "again").symlink_to(tmp_path)
    with pytest.raises(DataError, match="symbolic link loop"):
        FolderDataset(tmp_path, 8)
