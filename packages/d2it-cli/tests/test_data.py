"""Datasets: the `folder` layouts, unreadable images, and the procedural `synthetic` images."""

import numpy as np
import pytest
import torch
from PIL import Image

from d2it.errors import DataError
from d2it_cli.data import FolderConfig, FolderDataset, open_dataset, parse_data
from d2it_cli.data.synthetic import SyntheticConfig, SyntheticDataset


def write_image(path, size=(40, 30), seed=0, fmt=None):
    """An asymmetric RGB image (left half dark, right half bright plus noise)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    arr[:, size[0] // 2 :] += 180
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def test_class_subfolders_give_sorted_labels(tmp_path):
    write_image(tmp_path / "zebra" / "1.png")
    write_image(tmp_path / "apple" / "a.jpg", fmt="JPEG")
    write_image(tmp_path / "apple" / "nested" / "b.PNG")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path, 16, train=False)
    assert ds.classes == ["apple", "zebra"] and ds.num_classes == 2
    assert [label for _, label in ds.samples] == [0, 0, 1]
    x, y = ds[2]
    assert y == 1 and x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    # centre crop of a 40x30 image: the dark half stays on the left
    assert float(x[:, :, :4].mean()) < float(x[:, :, -4:].mean())


def test_flat_folder_is_one_unconditional_class(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    ds = open_dataset(str(tmp_path), 8, train=False)
    assert len(ds) == 3 and ds.num_classes == 1 and {ds[i][1] for i in range(3)} == {0}


def test_train_mode_flips_randomly_and_eval_never(tmp_path):
    write_image(tmp_path / "a.png", size=(16, 16))
    train, evaluation = FolderDataset(tmp_path, 16, train=True), FolderDataset(tmp_path, 16, train=False)
    plain = evaluation[0][0]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        x = train[0][0]
        seen.add("flip" if torch.equal(x, plain.flip(-1)) else "plain" if torch.equal(x, plain) else "other")
    assert seen == {"flip", "plain"}
    torch.manual_seed(3)
    a = train[0][0]
    torch.manual_seed(3)
    assert torch.equal(a, train[0][0])


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path, caplog):
    write_image(tmp_path / "good0.png", seed=0)
    write_image(tmp_path / "good1.png", seed=1)
    (tmp_path / "garbage.png").write_bytes(b"\x00not a png at all" * 10)
    full = write_image(tmp_path / "tmp.png", size=(64, 64), seed=2).read_bytes()
    (tmp_path / "tmp.png").unlink()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    with caplog.at_level("WARNING", logger="d2it.data"):
        ds = FolderDataset(tmp_path, 8, train=False)
    assert [p for p, _ in ds.skipped] == [str(tmp_path / "garbage.png")]
    assert "skipped 1 unreadable image" in caplog.text
    names = [p.name for p, _ in ds.samples]
    assert names == ["good0.png", "good1.png", "truncated.png"]
    x, _ = ds[2]  # the truncated file fails to decode: the next readable image stands in
    assert torch.equal(x, ds[0][0])
    assert len(ds.skipped) == 2 and ds.skipped[1][0].endswith("truncated.png")


def test_strict_fails_on_the_first_bad_image_with_its_path(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.jpg"):
        FolderDataset(tmp_path, 8, config=FolderConfig(strict=True))
    (tmp_path / "bad.jpg").unlink()
    full = write_image(tmp_path / "t.png", size=(64, 64), seed=5).read_bytes()
    (tmp_path / "t.png").write_bytes(full[: len(full) // 3])
    ds = FolderDataset(tmp_path, 8, config=FolderConfig(strict=True))
    with pytest.raises(DataError, match="t.png cannot be decoded"):
        ds[1]


def test_missing_or_empty_directories_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nowhere"), 8, train=True)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        open_dataset(str(tmp_path / "empty"), 8, train=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images"):
        open_dataset(str(tmp_path / "bad"), 8, train=True)


def test_cli_reports_an_empty_directory_in_one_line_with_exit_2(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    result = run_cli("thresholds", "--data", tmp_path / "empty", "--out", tmp_path / "t.json", "--image-size", "32")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no PNG or JPEG images found in {tmp_path / 'empty'}"


def test_parse_data_values():
    assert parse_data("synthetic") == ("synthetic", {}, None)
    assert parse_data("synthetic:12") == ("synthetic", {"num_images": 12}, None)
    assert parse_data("/data/ffhq") == ("folder", {}, "/data/ffhq")
    with pytest.raises(DataError, match="integer image count"):
        parse_data("synthetic:many")


def test_synthetic_is_deterministic_sized_and_labelled():
    a = open_dataset("synthetic:10", 48, train=False)
    b = SyntheticDataset(48, train=False, config=SyntheticConfig(num_images=10))
    assert len(a) == 10 and a.num_classes == 4
    for i in (0, 7):
        xa, ya = a[i]
        assert torch.equal(xa, b[i][0]) and ya == i % 4 and xa.shape == (3, 48, 48)
        assert -1.0 <= float(xa.min()) and float(xa.max()) <= 1.0
    assert not torch.equal(a[0][0], a[1][0])
    other = SyntheticDataset(48, train=False, config=SyntheticConfig(num_images=10, seed=1))
    assert not torch.equal(a[0][0], other[0][0])
    assert SyntheticDataset(100, train=False)[3][0].shape == (3, 100, 100)


def test_synthetic_detail_has_higher_region_entropy(d2it_registry):
    ds = SyntheticDataset(64, train=False, config=SyntheticConfig(num_images=24))
    coder = d2it_registry.create("grain_coder", "entropy", {"region": 16})
    detailed, smooth = [], []
    for i in range(len(ds)):
        x, _ = ds[i]
        scores = coder.scores(x[None])[0]
        mask = torch.from_numpy(ds.detail_mask(i)).float()
        cover = torch.nn.functional.avg_pool2d(mask[None, None], 16)[0, 0]
        detailed += scores[cover == 1].tolist()
        smooth += scores[cover == 0].tolist()
    assert len(detailed) > 20 and len(smooth) > 20
    assert np.median(detailed) > np.median(smooth) + 0.5
