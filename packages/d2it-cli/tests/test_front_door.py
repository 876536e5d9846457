"""The library's front door: `d2it.System.from_pretrained` and `d2it_sampling.Pipeline` draw what `d2it sample` does."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_hub import cache_repo

import d2it
from d2it.errors import ConfigError
from d2it_sampling import Pipeline


def sample_pngs(run_cli, system, out, *args) -> list[np.ndarray]:
    """`d2it sample ... --json` into `out`: its PNGs as uint8 arrays, in sample order."""
    result = run_cli("sample", "--system", system, "--out", out, "--quiet", "--json", *args)
    assert result.exit_code == 0, result.output
    return [np.asarray(Image.open(p)) for p in sorted((out / "samples").glob("*.png"))]


def test_pipeline_images_equal_d2it_sample(tiny_system, tmp_path, run_cli):
    classes = [0, 1, 2, 3, 1]
    want = sample_pngs(run_cli, tiny_system, tmp_path / "s", "--num", 5, "--class", "0,1,2,3,1", "--steps", 2,
                       "--seed", 3, "--batch", 2)  # fmt: skip
    pipe = Pipeline(d2it.System.from_pretrained(tiny_system))
    images = pipe(classes, steps=2, seed=3)  # cfg 1.5 and batches of 16: d2it sample's defaults
    assert [im.size for im in images] == [(32, 32)] * 5 and all(im.mode == "RGB" for im in images)
    for got, expected in zip(images, want):
        assert np.array_equal(np.asarray(got), expected)
    # the other outputs are the same samples
    assert np.array_equal(pipe(classes, steps=2, seed=3, output_type="uint8"), np.stack(want))
    pt = pipe(classes[:2], steps=2, seed=3, output_type="pt")
    assert pt.shape == (2, 3, 32, 32) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    gen = pipe(classes[:2], steps=2, seed=3, output_type="generation")
    assert gen.grain_maps.shape == (2, 2, 2) and torch.allclose((gen.images + 1) / 2, pt)
    # image i of a larger run: first_index
    assert np.array_equal(np.asarray(pipe([3], steps=2, seed=3, first_index=3)[0]), want[3])


def test_pipeline_with_another_sampler_equals_d2it_sample(tiny_system, tmp_path, run_cli):
    want = sample_pngs(run_cli, tiny_system, tmp_path / "s", "--num", 2, "--class", "2", "--steps", 3,
                       "--sampler", "dpmpp-2m", "--cfg-scale", 2.0, "--seed", 11)  # fmt: skip
    pipe = Pipeline.from_pretrained(tiny_system, sampler="dpmpp-2m", cfg_scale=2.0)
    images = pipe([2, 2], steps=3, seed=11)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(images, want))
    assert "dpmpp-2m" in repr(pipe)
    with pytest.raises(ConfigError, match="output_type"):
        pipe([0], output_type="jpeg")
    with pytest.raises(d2it.D2itError, match="valid samplers"):
        Pipeline(pipe.system, sampler="no-such-sampler")


def test_from_pretrained_reads_hf_systems_as_the_cli_does(tiny_system, tmp_path, run_cli, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_repo(cache, "me/tiny-d2it", tiny_system)
    want = sample_pngs(run_cli, "hf://me/tiny-d2it", tmp_path / "s", "--num", 1, "--class", "1", "--steps", 2)
    pipe = Pipeline.from_pretrained("hf://me/tiny-d2it")
    assert np.array_equal(np.asarray(pipe([1], steps=2)[0]), want[0])
    # the command line and the library give the same one-sentence error offline
    result = run_cli("sample", "--system", "hf://me/elsewhere", "--out", tmp_path / "x")
    with pytest.raises(d2it.D2itError) as caught:
        d2it.System.from_pretrained("hf://me/elsewhere")
    assert result.exit_code == 2 and str(caught.value) in result.output


def test_save_pretrained_writes_a_system_the_cli_reads(tiny_system, tmp_path, run_cli):
    system = d2it.System.from_pretrained(tiny_system)
    system.save_pretrained(tmp_path / "copy", extra={"from": "test"})
    result = run_cli("build", "--from", tmp_path / "copy", "--json", "--no-count", "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "copy" / "d2it.json").read_text())["extra"] == {"from": "test"}
    a, b = system.state_dict(), d2it.System.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
