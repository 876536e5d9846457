"""What a new user hits first: `--data` spellings of shards, `import sd-vae` into a new folder, `--version`,
and training a DVAE before its thresholds are measured."""

import json
from pathlib import Path

import pytest
from PIL import Image

from d2it import system as systems
from d2it.errors import DataError
from d2it_cli.data import open_dataset, parse_data
from d2it_cli.data.pack import pack_folder
from d2it_cli.data.wds import expand_shards
from d2it_cli.versions import plugin_distributions, version_report


@pytest.fixture
def shards(tmp_path):
    """Six images of two classes packed by `d2it pack` into three shards (and classes.json) in tmp/shards."""
    for i in range(6):
        folder = tmp_path / "imgs" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
    pack_folder(tmp_path / "imgs", tmp_path / "shards", shard_size=2)
    return tmp_path / "shards"


def test_wds_reads_the_packed_folder_globs_and_file_urls(shards):
    files = [str(shards / f"train-{i:06d}.tar") for i in range(3)]
    assert expand_shards(str(shards)) == files  # the pattern classes.json records
    assert expand_shards(f"{shards}/*.tar") == files
    assert expand_shards(f"file:{files[0]}::file://{files[1]}") == files[:2]
    assert expand_shards(str(shards / "train-{000000..000002}.tar")) == files
    dataset = open_dataset(f"wds:{shards}", 8, train=False)
    assert dataset.num_classes == 2 and dataset.length == 6
    with pytest.raises(DataError, match=r"matches no files"):
        expand_shards(f"{shards}/*.tgz")


@pytest.mark.parametrize("bare", ["{shards}", "{shards}/train-{{000000..000002}}.tar", "{shards}/train-000000.tar"])
def test_a_bare_path_that_looks_like_shards_says_to_write_wds(shards, run_cli, tmp_path, bare):
    text = bare.format(shards=shards)
    with pytest.raises(DataError, match=r"looks like webdataset shards, not an image folder; name them --data wds:"):
        parse_data(text)
    result = run_cli("thresholds", "--data", text, "--out", tmp_path / "t.json")
    assert result.exit_code == 2 and f"--data wds:{text}" in result.output and "Traceback" not in result.output


def test_an_image_folder_is_still_the_folder_dataset(shards):
    assert parse_data(str(shards.parent / "imgs"))[0] == "folder"


def test_import_sd_vae_into_a_new_folder_needs_the_stage2_parts_named(tmp_path, run_cli):
    from test_interop import tiny_sd_vae_folder

    folder, _ = tiny_sd_vae_folder(tmp_path)
    new = tmp_path / "new"
    result = run_cli("import", "sd-vae", folder, "--out", new)
    assert result.exit_code == 2 and "holds no system" in result.output and "--backbone" in result.output
    assert not new.exists() or not any(new.iterdir())  # nothing large and random written unasked
    result = run_cli("import", "sd-vae", folder, "--out", new, "--image-size", "64")
    assert result.exit_code == 2 and "name its --backbone too" in result.output
    tiny = ["--image-size", "64", "--set", "backbone.depth=1", "--set", "backbone.hidden_size=32"]
    result = run_cli(
        "import", "sd-vae", folder, "--out", new, "--backbone", "dit-s", *tiny, "--set", "backbone.num_heads=2"
    )
    assert result.exit_code == 0, result.output
    record, _ = systems.read_record(new)
    assert (record.vae, record.backbone, record.image_size) == ("vae-f8", "dit-s", 64)
    assert (new / "content.safetensors").stat().st_size < 2_000_000
    # into an existing system the VAE replaces its VAE and keeps the rest; new-system options are refused
    result = run_cli("import", "sd-vae", folder, "--out", new, "--backbone", "dit-xl")
    assert result.exit_code == 2 and "already holds a system" in result.output
    assert run_cli("import", "sd-vae", folder, "--out", new).exit_code == 0


def test_version_lists_packages_torch_and_plugins(tmp_path, monkeypatch, run_cli):
    # a plugin distribution known only from its metadata: --version imports nothing
    info = tmp_path / "site" / "acme_d2it_plugin-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-d2it-plugin\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[d2it]\nacme = acme_d2it_plugin_not_importable\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert plugin_distributions()["acme-d2it-plugin"] == "1.2.3"
    result = run_cli("--version")
    assert result.exit_code == 0 and result.output == version_report() + "\n"
    lines = result.output.splitlines()
    assert lines[0].startswith("d2it 0.1.0 (plugin API ") and "  d2it-core 0.1.0" in lines
    assert any(line.startswith("  torch ") for line in lines) and "  acme-d2it-plugin 1.2.3" in lines
    assert lines.index("plugins:") < lines.index("  acme-d2it-plugin 1.2.3")


def test_training_a_dvae_before_its_thresholds_warns_naming_the_command(tiny_system, tmp_path, run_cli):
    args = ["train", "dvae", "--system", tiny_system, "--data", "synthetic:4", "--steps", "1", "--batch", "2"]
    result = run_cli(*args, "--lpips-random", "--quiet", "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "no measured entropy thresholds" in line]
    assert len(warning) == 1, result.stderr
    assert f"d2it thresholds --system {tiny_system} --data synthetic:4 --out thresholds.json" in warning[0]
    assert json.loads((Path(tiny_system) / "d2it.json").read_text())["system"]["thresholds"] == []
