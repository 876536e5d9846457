"""Datasets: the `folder` layouts, unreadable images, and the procedural `synthetic` images."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import d2it
import d2it_cli.data.folder as folder_module
import d2it_cli.plugin
from d2it.errors import DataError
from d2it.registry import Registry
from d2it.spec import ComponentSpec
from d2it_cli.data import FolderConfig, FolderDataset, open_dataset, parse_data
from d2it_cli.data.synthetic import SyntheticConfig, SyntheticDataset
from d2it_cli.engine.feed import default_workers


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


def test_corrupt_and_truncated_images_are_skipped_and_counted_when_read(tmp_path, caplog, monkeypatch):
    write_image(tmp_path / "good0.png", seed=0)
    write_image(tmp_path / "good1.png", seed=1)
    (tmp_path / "garbage.png").write_bytes(b"\x00not a png at all" * 10)
    full = write_image(tmp_path / "tmp.png", size=(64, 64), seed=2).read_bytes()
    (tmp_path / "tmp.png").unlink()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    ds = FolderDataset(tmp_path, 8, train=False)
    assert opened == [] and ds.skipped == []  # start-up lists the folder, it opens no image
    assert [p.name for p, _ in ds.samples] == ["garbage.png", "good0.png", "good1.png", "truncated.png"]
    with caplog.at_level("WARNING", logger="d2it.data"):
        x, _ = ds[0]  # garbage: the next readable image stands in
    assert torch.equal(x, ds[1][0])
    assert [p for p, _ in ds.skipped] == [str(tmp_path / "garbage.png")] and "skipped corrupt image" in caplog.text
    assert torch.equal(ds[3][0], ds[0][0])  # truncated: wraps around to the first readable one
    assert len(ds.skipped) == 2 and ds.skipped[1][0].endswith("truncated.png")


def test_strict_fails_on_the_first_bad_image_with_its_path(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    ds = FolderDataset(tmp_path, 8, config=FolderConfig(strict=True))
    with pytest.raises(DataError, match="bad.jpg cannot be decoded"):
        ds[0]
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
    with pytest.raises(DataError, match="no PNG, JPEG or WebP images"):
        open_dataset(str(tmp_path / "empty"), 8, train=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images"):
        open_dataset(str(tmp_path / "bad"), 8, train=True)[0]


def test_cli_reports_an_empty_directory_in_one_line_with_exit_2(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    result = run_cli("thresholds", "--data", tmp_path / "empty", "--out", tmp_path / "t.json", "--image-size", "32")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no PNG, JPEG or WebP images found in {tmp_path / 'empty'}"


def test_parse_data_values(d2it_registry, tmp_path):
    assert parse_data("synthetic") == ("synthetic", {}, None)
    assert parse_data("synthetic:12") == ("synthetic", {"num_images": 12}, None)
    assert parse_data("/data/ffhq") == ("folder", {}, "/data/ffhq")
    assert parse_data("folder:/data/ffhq", d2it_registry) == ("folder", {}, "/data/ffhq")
    assert parse_data("wds:/d/train-{000000..000127}.tar", d2it_registry) == (
        "wds",
        {},
        "/d/train-{000000..000127}.tar",
    )
    assert parse_data("wds:https://host/a-{0..3}.tar", d2it_registry)[2] == "https://host/a-{0..3}.tar"
    assert parse_data("hf:/data/imagenet:validation", d2it_registry) == ("hf", {}, "/data/imagenet:validation")
    odd = tmp_path / "x:y"  # an existing path with a colon stays a folder
    odd.mkdir()
    assert parse_data(str(odd), d2it_registry) == ("folder", {}, str(odd))
    with pytest.raises(DataError, match="integer image count"):
        parse_data("synthetic:many")
    valid = "folder, hf, openmoji, synthetic, wds"
    with pytest.raises(DataError, match=rf"unknown dataset 'myplugin'; valid datasets: {valid}"):
        parse_data("myplugin:/x", d2it_registry)


def test_a_registered_plugin_dataset_is_chosen_by_name(tmp_path):
    class Plugin:
        @d2it.hookimpl
        def d2it_datasets(self):
            return [ComponentSpec(name="ones", kind="dataset", factory=make_ones, config=SyntheticConfig)]

    registry = Registry()
    registry.register(d2it_cli.plugin, "d2it-cli")
    registry.register(Plugin(), "ones-plugin")
    ds = open_dataset("ones:/anything", 8, train=False, registry=registry)
    assert ds == ("/anything", 8)


def make_ones(config, *, root, image_size, train=True):
    return (root, image_size)


def test_unknown_dataset_name_exits_2_listing_valid_ones(run_cli, tmp_path):
    result = run_cli("thresholds", "--data", "nope:/x", "--out", tmp_path / "t.json", "--image-size", "32")
    assert result.exit_code == 2 and "valid datasets: folder, hf, openmoji, synthetic, wds" in result.output


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


def _scan_worker(rank, world, port, root, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if rank == 1:  # only rank 0 may list the tree

        def refuse(*args):
            raise AssertionError("rank 1 listed the folder")

        folder_module.scan_folder = refuse
    ds = FolderDataset(root, 8)
    torch.save({"files": ds.files, "labels": ds.labels.tolist(), "classes": ds.classes}, Path(out) / f"{rank}.pt")
    torch.distributed.destroy_process_group()


def test_rank_zero_lists_the_folder_once_and_shares_the_index(tmp_path):
    for name in ("b/1.png", "b/2.png", "a/x/3.png"):
        write_image(tmp_path / "data" / name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_scan_worker, args=(2, port, str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert r0 == r1 and r0["files"] == ["a/x/3.png", "b/1.png", "b/2.png"] and r0["classes"] == ["a", "b"]


def test_default_workers_share_the_cpus_between_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers() == 8  # capped
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 0
