"""Datasets at scale: `d2it pack`, the `wds` stream (splitting, shuffling, resume, corrupt samples) and `hf` tables."""

import io
import json
import tarfile
from collections import Counter

import attrs
import numpy as np
import pytest
import torch
from PIL import Image

from d2it.errors import DataError
from d2it_cli.data import first_items, open_dataset
from d2it_cli.data.hf import HfConfig, HfDataset
from d2it_cli.data.stream import StreamSetup, worker_consumed
from d2it_cli.data.wds import WdsConfig, WdsDataset
from d2it_cli.engine.feed import Feed, merge_units
from d2it_cli.engine.split import BatchSplit


def image_bytes(value: int, fmt="PNG", size=8) -> bytes:
    """A flat image whose grey level encodes `value` (0..255)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_shards(folder, n: int, per_shard: int, corrupt=()):
    """Tar shards of `n` samples `<i>.png` + `<i>.cls` (= i, so labels identify samples); some images corrupt."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = (n + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(folder / f"part-{s:03d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                for ext, data in (("png", b"broken" if i in corrupt else image_bytes(i)), ("cls", str(i).encode())):
                    info = tarfile.TarInfo(f"{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"part-{{000..{shards - 1:03d}}}.tar")


def labels_of(items):
    return [int(y) for _, y in items]


def test_pack_writes_shards_and_the_class_mapping_and_wds_reads_them_back(tmp_path, run_cli):
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(4):
            (tmp_path / "imgs" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "imgs" / name / f"{i}.jpg").write_bytes(image_bytes(40 * c + i, "JPEG", 16))
    result = run_cli("pack", "--data", tmp_path / "imgs", "--out", tmp_path / "shards", "--shard-size", "5")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "shards" / "classes.json").read_text())
    assert meta["classes"] == ["cat", "dog", "eel"] and meta["count"] == 12
    assert meta["pattern"] == "train-{000000..000002}.tar"
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [f"train-00000{i}.tar" for i in range(3)]
    assert "--data 'wds:" in result.output
    ds = open_dataset(f"wds:{tmp_path / 'shards' / meta['pattern']}", 16, train=False)
    assert ds.num_classes == 3 and ds.classes == ["cat", "dog", "eel"] and ds.length == 12
    items = first_items(ds, 100)
    assert len(items) == 12 and Counter(labels_of(items)) == {0: 4, 1: 4, 2: 4}
    assert items[0][0].shape == (3, 16, 16)
    # the first shard mixes classes (packed in shuffled order)
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        classes = {tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls")}
    assert len(classes) > 1


def test_shards_are_split_over_ranks_and_workers_without_overlap(tmp_path):
    pattern = write_shards(tmp_path, 24, 3)  # 8 shards, 4 slots
    seen = []
    for rank in range(2):
        ds = WdsDataset(pattern, 8, train=False, config=WdsConfig(shuffle_buffer=0, num_classes=24))
        ds.configure(StreamSetup(rank=rank, world=2, endless=False, shuffle=True, seed=3))
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
        seen.append([int(y) for _, ys in loader for y in ys])
    assert sorted(seen[0] + seen[1]) == list(range(24)) and not set(seen[0]) & set(seen[1])
    # fewer shards than slots: every slot reads all and keeps its share of the samples
    small = write_shards(tmp_path / "small", 10, 10)
    parts = []
    for rank in range(3):
        ds = WdsDataset(small, 8, train=False, config=WdsConfig(shuffle_buffer=0, num_classes=10))
        parts.append(labels_of(ds.configure(StreamSetup(rank=rank, world=3, endless=False))))
    assert sorted(sum(parts, [])) == list(range(10))


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    pattern = write_shards(tmp_path, 6, 6, corrupt={2, 4})
    ds = WdsDataset(pattern, 8, train=False, config=WdsConfig(num_classes=6))
    with caplog.at_level("WARNING", logger="d2it.data"):
        got = labels_of(first_items(ds, 10))
    assert got == [0, 1, 3, 5] and ds.skipped == 2 and "skipped corrupt sample 00002" in caplog.text
    strict = WdsDataset(pattern, 8, train=False, config=WdsConfig(num_classes=6, strict=True))
    with pytest.raises(DataError, match="00002 of .* cannot be decoded"):
        first_items(strict, 10)


def test_shards_open_through_urls_too(tmp_path):
    write_shards(tmp_path, 6, 3)
    ds = WdsDataset(f"pipe:cat {tmp_path}/part-{{000..001}}.tar", 8, train=False, config=WdsConfig(num_classes=6))
    assert sorted(labels_of(first_items(ds, 10))) == list(range(6))


def test_missing_shards_and_empty_patterns_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="2 of 2 shard"):
        WdsDataset(str(tmp_path / "x-{0..1}.tar"), 8)
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    ds = WdsDataset(str(tmp_path / "empty.tar"), 8).configure(StreamSetup(endless=True))
    with pytest.raises(DataError, match="reader 0 of 1 found no samples"):
        next(iter(ds))
    with tarfile.open(tmp_path / "text.tar", "w") as tar:  # samples, but none with an image
        tar.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    ds = WdsDataset(str(tmp_path / "text.tar"), 8).configure(StreamSetup(endless=True))
    with pytest.raises(DataError, match="could not decode any of the first 1000 samples"):
        next(iter(ds))


def _stream(tmp_path, buffer):
    pattern = write_shards(tmp_path, 40, 5)  # 8 shards
    return WdsDataset(pattern, 8, train=True, config=WdsConfig(shuffle_buffer=buffer, num_classes=40))


def _take(feed, n, state=None):
    if state is not None:
        feed.load_state_dict(state)
    it = feed.batches()
    out = [int(y) for _, batch in zip(range(n), it) for y in batch[1]]
    return out, feed.state_dict()


@pytest.mark.parametrize("buffer", [0, 6])
def test_resume_mid_stream_repeats_or_skips_at_most_the_shuffle_buffer(tmp_path, buffer):
    def feed():
        return Feed(_stream(tmp_path, buffer), split=BatchSplit.even(2, 1, 1), seed=1, rank=0, workers=2)

    full, _ = _take(feed(), 12)
    head, state = _take(feed(), 5)
    assert state["samples"] == 10 and head == full[:10]
    tail, _ = _take(feed(), 7, state)
    if buffer == 0:
        assert head + tail == full  # without shuffling the stream continues exactly
    else:
        repeated = Counter(head) & Counter(tail)
        skipped = set(full[:10] + full[10:]) - set(head + tail)
        # each worker restarts its buffer: at most one buffer per worker repeated, one skipped
        assert sum(repeated.values()) <= 2 * buffer and len(skipped) <= 2 * buffer
        assert head + tail != full or buffer == 0


def test_worker_share_follows_the_rotation():
    assert [worker_consumed(5, 2, w, 2) for w in range(2)] == [6, 4]
    assert [worker_consumed(4, 3, w, 3) for w in range(3)] == [6, 3, 3]


def test_a_stream_of_unknown_length_needs_steps(tmp_path):
    ds = _stream(tmp_path, 0)
    ds.length = None
    feed = Feed(ds, split=BatchSplit.even(2, 1, 1), seed=0, rank=0, workers=0)
    assert feed.steps_per_epoch() is None and feed.epoch is None
    with pytest.raises(Exception, match="--epochs needs a dataset of known size"):
        feed.require_epochs("--epochs")


# -- Hugging Face datasets ----------------------------------------------------------------------------
def _hf_table(n=6):
    import datasets

    features = datasets.Features({"picture": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    images = [Image.fromarray(np.full((10, 12, 3), 20 * i, np.uint8)) for i in range(n)]
    return datasets.Dataset.from_dict({"picture": images, "y": [i % 3 for i in range(n)]}, features=features)


def test_hf_reads_a_save_to_disk_folder_offline_with_column_options(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = _hf_table()
    datasets.DatasetDict({"train": table, "validation": table.select(range(2))}).save_to_disk(tmp_path / "dd")
    ds = open_dataset(f"hf:{tmp_path / 'dd'}", 8, train=False, options={"label_column": "y"})
    assert isinstance(ds, HfDataset) and len(ds) == 6 and ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert ds.image_column == "picture"  # the Image feature is found without an option
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1 and float(x.mean()) == pytest.approx(80 / 127.5 - 1, abs=1e-5)
    val = open_dataset(f"hf:{tmp_path / 'dd'}:validation", 8, train=False, options={"label_column": "y"})
    assert len(val) == 2
    with pytest.raises(DataError, match="has no split 'test'; it has train, validation"):
        open_dataset(f"hf:{tmp_path / 'dd'}:test", 8, train=False)
    with pytest.raises(DataError, match="no image column 'photo'"):
        HfDataset(str(tmp_path / "dd"), 8, config=HfConfig(image_column="photo"))


def test_hf_reads_local_parquet_files_and_skips_corrupt_rows(tmp_path, caplog):
    import datasets

    rows = [{"bytes": image_bytes(10 * i), "path": None} for i in range(4)]
    rows[1] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 2, 1]}, features=features).to_parquet(
        tmp_path / "d.parquet"
    )
    ds = open_dataset(f"hf:{tmp_path / 'd.parquet'}", 8, train=False)
    assert len(ds) == 4 and ds.num_classes == 3 and ds.label_column == "label"
    with caplog.at_level("WARNING", logger="d2it.data"):
        x, y = ds[1]
    assert y == 2 and ds.skipped == [1] and "skipped corrupt row 1" in caplog.text


def test_hf_name_without_network_exits_2_in_one_sentence(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = run_cli(
        "thresholds", "--data", "hf:nobody/no-such-dataset", "--out", tmp_path / "t.json", "--image-size", "32"
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "could not be loaded from the Hugging Face Hub" in lines[0]


# -- the whole route on the command line ---------------------------------------------------------------
def test_pack_then_thresholds_train_resume_and_encode_from_shards(tiny_system, tmp_path, run_cli):
    for c in range(2):
        for i in range(6):
            (tmp_path / "imgs" / f"c{c}").mkdir(parents=True, exist_ok=True)
            arr = np.random.default_rng(10 * c + i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    assert run_cli("pack", "--data", tmp_path / "imgs", "--out", tmp_path / "wds", "--shard-size", "3").exit_code == 0
    data = f"wds:{tmp_path / 'wds' / 'train-{000000..000003}.tar'}"
    result = run_cli("thresholds", "--data", data, "--system", tiny_system, "--out", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.json").read_text())["images"] == 12
    common = ["train", "dvae", "--system", tiny_system, "--data", data, "--data-option", "shuffle_buffer=3"]
    common += ["--batch", "2", "--workers", "2", "--ckpt-every", "2", "--log-every", "1", "--perceptual-weight", "0"]
    common += ["--save-to-system"]  # the encode below reads the trained VAE
    first = run_cli(*common, "--steps", "2", "--sample-every", "2", "--report-to", "tensorboard")
    assert first.exit_code == 0, first.output
    # off a terminal: one plain line per logged step
    assert [line.split(" |")[0] for line in first.output.splitlines() if line.startswith("train ")] == [
        "train dvae step 1/2",
        "train dvae step 2/2",
    ]
    run_dir = tiny_system / "runs" / "dvae"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    second = run_cli(*common, "--steps", "3", "--resume", "latest", "--quiet")
    assert second.exit_code == 0, second.output
    from d2it_cli.engine import latest_checkpoint, load_checkpoint, read_log

    assert [r["step"] for r in read_log(run_dir)] == [1, 2, 3]
    _, state, _ = load_checkpoint(latest_checkpoint(run_dir))
    assert {k: state["data"][k] for k in ("samples", "world", "batch", "workers")} == {
        "samples": 6,
        "world": 1,
        "batch": 2,
        "workers": 2,
    }
    assert sum(c for _, _, c in state["data"]["units"]) == 6  # what was consumed of each shard
    encoded = run_cli("encode", "--system", tiny_system, "--data", data, "--out", tmp_path / "cache", "--quiet")
    assert encoded.exit_code == 0, encoded.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["count"] == 12 and manifest["num_classes"] == 2 and manifest["classes"] == ["c0", "c1"]
    recon = ["eval", "recon", "--system", tiny_system, "--data", data, "--metrics", "psnr", "--device", "cpu"]
    scored = run_cli(*recon, "--num", "5", "--out", tmp_path / "recon.json", "--quiet")
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "recon.json").read_text())["data"]["count"] == 5
    short = run_cli(*recon, "--num", "20", "--quiet")
    assert short.exit_code == 2 and "holds 12 images, fewer than the 20 requested" in short.output


class OneEpoch(WdsDataset):
    """The wds stream read for one epoch only, so that a test can collect all of it."""

    def configure(self, setup):
        return super().configure(attrs.evolve(setup, endless=False))


def _drain(feeds, state):
    """Every sample the feeds (the ranks of a resumed run) yield until the epoch ends."""
    for feed in feeds:
        feed.load_state_dict(state)
    return [int(y) for feed in feeds for batch in feed.batches() for y in batch[1]]


@pytest.mark.parametrize("buffer", [0, 4])
@pytest.mark.parametrize("world, workers", [(2, 2), (3, 0), (1, 1)])
def test_resume_on_another_layout_continues_every_shard_where_it_stopped(tmp_path, buffer, world, workers):
    pattern = write_shards(tmp_path, 40, 5)  # 8 shards
    config = WdsConfig(shuffle_buffer=buffer, num_classes=40)

    def feed(rank=0, world=1, workers=2):
        ds = OneEpoch(pattern, 8, train=True, config=config)
        return Feed(ds, split=BatchSplit.even(2, 1, world), seed=1, rank=rank, workers=workers)

    head, state = _take(feed(), 7)  # 14 samples from 2 readers, mid-shard
    assert state["samples"] == 14 and sum(c for _, _, c in state["units"]) == 14
    tail = _drain([feed(rank, world, workers) for rank in range(world)], state)
    counts = Counter(head + tail)
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    skipped = 40 - len(counts)
    if buffer == 0:
        assert repeated == skipped == 0 and sorted(counts) == list(range(40))  # exactly the rest of the epoch
    else:  # at most what sat in the 2 interrupted readers' buffers
        assert repeated <= 2 * buffer and skipped <= 2 * buffer


def test_the_old_even_share_skip_is_bounded_by_nothing_and_said_so(tmp_path, capsys):
    ds = _stream(tmp_path, 0)
    feed = Feed(ds, split=BatchSplit.even(2, 1, 1), seed=1, rank=0, workers=0)
    _take(feed, 1, {"samples": 8, "world": 2, "batch": 2, "workers": 1})  # a checkpoint without unit counts
    assert "predates per-shard stream positions" in capsys.readouterr().out


def test_unit_counts_merge_over_ranks_and_forget_complete_epochs():
    a = {"units": [[0, 0, 5], [0, 1, 2], [1, 0, 1]], "unit_sizes": [[0, 5]]}
    b = {"units": [[0, 1, 3], [1, 1, 2]], "unit_sizes": [[1, 5]]}
    merged = merge_units([a, b], n_units=2)
    assert merged == {"units": [[1, 0, 1], [1, 1, 2]], "unit_sizes": [[0, 5], [1, 5]]}  # epoch 0 was complete
    assert merge_units([a, b], n_units=3)["units"][0] == [0, 0, 5]  # unit 2 of epoch 0 was never read
    assert merge_units([a], n_units=2)["units"][:2] == [[0, 0, 5], [0, 1, 2]]


def test_stream_counts_are_gathered_in_a_process_group(tmp_path):
    import torch.distributed as tdist

    tdist.init_process_group("gloo", store=tdist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        feed = Feed(_stream(tmp_path / "data", 0), split=BatchSplit.even(2, 1, 1), seed=1, rank=0, workers=0)
        labels, state = _take(feed, 4)
    finally:
        tdist.destroy_process_group()
    assert state["samples"] == 8 and sum(c for _, _, c in state["units"]) == 8
    assert state["units"][0][0] == 0 and len(state["unit_sizes"]) >= 1  # a finished shard tells its size


def test_after_a_layout_change_a_resume_on_the_new_layout_is_exact_again(tmp_path):
    ds = _stream(tmp_path, 0)

    def feed(workers):
        return Feed(ds, split=BatchSplit.even(2, 1, 1), seed=1, rank=0, workers=workers)

    _, first = _take(feed(2), 5)  # two readers
    whole, _ = _take(feed(1), 10, first)  # one reader from there on, uninterrupted
    head, second = _take(feed(1), 4, first)
    assert second["origin"]["samples"] == 10 and head == whole[:8]
    tail, third = _take(feed(1), 6, second)  # the same one-reader layout: its stream replays from the origin
    assert head + tail == whole and third["origin"] == second["origin"]
