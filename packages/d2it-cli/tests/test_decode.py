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


# ------------------------------------------------------------------- one decoder for every data route
def _awkward_images(folder):
    """The images Pillow's bare convert("RGB") gets wrong, one file each (sorted names = folder order)."""
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "a_grey16.png")
    im = Image.new("RGB", (16, 8), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(folder / "b_exif.jpg", exif=exif.tobytes(), quality=100)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))
    pal.save(folder / "c_palette.png", transparency=0)
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 1] = 180
    arr[:4, :, 3] = 255
    Image.fromarray(arr, mode="RGBA").save(folder / "d_rgba.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "e_cmyk.jpg", quality=100)
    return sorted(folder.iterdir())


def test_folder_wds_and_hf_routes_decode_the_same_files_to_identical_tensors(tmp_path, monkeypatch):
    import tarfile

    import datasets
    import torch

    from d2it_cli.data import first_items
    from d2it_cli.data.hf import HfDataset
    from d2it_cli.data.wds import WdsConfig, WdsDataset

    files = _awkward_images(tmp_path / "imgs")
    folder = FolderDataset(tmp_path / "imgs", 8, train=False)
    expected = [folder[i][0] for i in range(len(files))]
    assert float(expected[0].mean()) == pytest.approx(128 / 127.5 - 1, abs=1e-6)  # grey, not white

    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i, f in enumerate(files):
            tar.add(f, arcname=f"{i:03d}{f.suffix}")
    wds = WdsDataset(str(tmp_path / "shard.tar"), 8, train=False, config=WdsConfig(shuffle_buffer=0))
    streamed = [x for x, _ in first_items(wds, 100)]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": [str(f) for f in files]}, features=features).save_to_disk(tmp_path / "hf")
    table = HfDataset(str(tmp_path / "hf"), 8, train=False)
    rows = [table[i][0] for i in range(len(files))]

    assert len(streamed) == len(rows) == len(files)
    for name, want, got_wds, got_hf in zip([f.name for f in files], expected, streamed, rows):
        assert torch.equal(got_wds, want), name
        assert torch.equal(got_hf, want), name
