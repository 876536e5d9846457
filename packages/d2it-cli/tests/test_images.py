"""Image utilities: conversions, grids, grain overlays, heatmaps and loss plots."""

import numpy as np
import pytest
import torch
from PIL import Image

from d2it.errors import DataError
from d2it_cli import images as I


def test_to_uint8_range_layout_and_rounding():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 3.0, -7.0]).view(1, 1, 1, 7).expand(2, 3, 1, 7)
    out = I.to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 7, 3)
    assert out[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255, 0]
    assert I.to_uint8(x[0]).shape == (1, 7, 3)


def test_uint8_round_trip_is_close():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    back = I.from_uint8(I.to_uint8(x))
    assert back.shape == x.shape
    assert (back - x).abs().max() < 1.5 / 127.5


def test_to_uint8_rejects_wrong_rank():
    with pytest.raises(DataError):
        I.to_uint8(torch.zeros(3, 3))


def test_grid_layout_and_padding(tmp_path):
    imgs = np.stack([np.full((4, 6, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = I.make_grid(imgs, nrow=3, padding=1, pad_value=200)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert (grid[1:5, 1:7] == 10).all() and (grid[6:10, 8:14] == 50).all()
    assert (grid[0] == 200).all() and (grid[6:10, 15:21] == 200).all()  # empty sixth slot
    path = I.save_grid(imgs, tmp_path / "g.png", nrow=3, padding=1, pad_value=200)
    assert np.array_equal(np.asarray(Image.open(path)), grid)


def test_png_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    I.save_png(arr, tmp_path / "a.png")
    assert np.array_equal(I.load_png(tmp_path / "a.png"), arr)
    with pytest.raises(DataError):
        I.load_png(tmp_path / "missing.png")


def test_grain_overlay_colours_regions():
    imgs = np.full((1, 32, 32, 3), 128, np.uint8)
    gmap = torch.tensor([[[0, 1], [1, 0]]])
    out = I.grain_overlay(imgs, gmap, alpha=0.5, borders=False)
    coarse, fine = out[0, 4, 4], out[0, 4, 20]  # top-left region coarse, top-right fine
    assert coarse[2] > coarse[0]  # blue dominates coarse regions
    assert fine[0] > fine[2]  # red dominates fine regions
    assert np.array_equal(out[0, 20, 4], fine) and np.array_equal(out[0, 20, 20], coarse)
    # a region spans image size / grid = 16 pixels
    assert np.array_equal(out[0, 15, 15], coarse) and np.array_equal(out[0, 16, 16], coarse)
    assert not np.array_equal(out[0, 15, 16], coarse)


def test_grain_overlay_borders_and_errors():
    imgs = np.full((2, 16, 16, 3), 200, np.uint8)
    gmap = torch.zeros(2, 2, 2, dtype=torch.int64)
    out = I.grain_overlay(imgs, gmap, alpha=0.0, borders=True)
    assert (out[:, 0] < 200).all() and (out[:, 3, 3] == 200).all()
    with pytest.raises(DataError):
        I.grain_overlay(imgs, torch.zeros(3, 2, 2, dtype=torch.int64))
    with pytest.raises(DataError):
        I.grain_overlay(imgs, torch.full((2, 2, 2), 2))  # grain 2 of a two-grain map
    with pytest.raises(DataError):
        I.grain_overlay(imgs, torch.zeros(2, 3, 3, dtype=torch.int64))  # 16 px is not a multiple of 3


def test_grain_colours_paper_convention():
    c = I.grain_colours(3)
    assert tuple(c[0]) == I.COARSE_RGB and tuple(c[-1]) == I.FINE_RGB
    assert c[0][2] > c[0][0] and c[-1][0] > c[-1][2]


def test_entropy_heatmap_is_monotone():
    ent = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = I.entropy_heatmap(ent, size=8)
    assert out.shape == (1, 8, 8, 3) and out.dtype == np.uint8
    brightness = [int(out[0, y, x].sum()) for y, x in [(0, 0), (0, 4), (4, 0), (4, 4)]]
    assert brightness == sorted(brightness) and brightness[0] < brightness[-1]
    flat = I.entropy_heatmap(torch.zeros(1, 2, 2))
    assert (flat == flat[0, 0, 0]).all()


def test_plot_curves_draws_lines(tmp_path):
    path = tmp_path / "loss.png"
    arr = I.plot_curves({"a": [3.0, 2.0, 1.0, 0.5], "b": [(0, 1.0), (3, 0.2)]}, path, title="t", log_y=True)
    assert path.is_file() and arr.shape == (340, 560, 3)
    reds = ((arr[..., 0] > 180) & (arr[..., 1] < 80) & (arr[..., 2] < 80)).sum()
    blues = ((arr[..., 2] > 150) & (arr[..., 0] < 80)).sum()
    assert reds > 50 and blues > 50
    empty = I.plot_curves({}, title="none")
    assert empty.shape == (340, 560, 3)


def test_smooth_and_ticks():
    assert I.smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    s = I.smooth([0.0, 10.0], 0.5)
    assert s[0] == 0.0 and 0 < s[1] < 10
    ticks = I._nice_ticks(0.0, 97.0)
    assert ticks[0] == 0 and ticks[-1] <= 97 and len(ticks) >= 4


def test_stacks_and_labels():
    a = np.zeros((4, 5, 3), np.uint8)
    b = np.full((6, 2, 3), 9, np.uint8)
    h = I.hstack([a, b], gap=1)
    assert h.shape == (6, 8, 3) and (h[:6, 6:8] == 9).all()
    v = I.vstack([a, b], gap=2)
    assert v.shape == (12, 5, 3)
    lab = I.label_image(a, "x", height=10)
    assert lab.shape == (14, 5, 3)
