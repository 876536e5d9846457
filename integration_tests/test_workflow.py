"""The whole two-stage workflow through the installed `d2it` script on a tiny system."""

import json

import numpy as np
import pytest

from conftest import run_d2it

TINY = [
    "--vae", "dvae-kl", "--backbone", "dit-s", "--refine", "window16", "--grain", "dgt-s",
    "--image-size", "32", "--num-classes", "4", "--no-count",
    "--set", "vae.base_width=8", "--set", "vae.norm_groups=4", "--set", "vae.num_res_blocks=1",
    "--set", "vae.attn_levels=0", "--set", "backbone.depth=2", "--set", "backbone.hidden_size=32",
    "--set", "backbone.num_heads=2", "--set", "grain.depth=1", "--set", "grain.hidden_size=32",
    "--set", "grain.num_heads=2",
]  # fmt: skip
FAST = ["--batch", "4", "--log-every", "1", "--ckpt-every", "2", "--quiet"]
DATA = "synthetic:12"


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny system taken through thresholds, DVAE training, encoding and both stage-2 trainers."""
    root = tmp_path_factory.mktemp("workflow")
    system, cache = root / "system", root / "cache"
    run_d2it("build", *TINY, "--out", system, check=0)
    run_d2it("thresholds", "--data", DATA, "--system", system, "--out", root / "thresholds.json", check=0)
    dvae = ["train", "dvae", "--system", system, "--data", DATA, *FAST, "--steps", "2", "--perceptual-weight", "0"]
    run_d2it(*dvae, "--save-to-system", check=0)  # the next stages read the trained part from the system
    run_d2it("encode", "--system", system, "--data", DATA, "--out", cache, "--quiet", check=0)
    for part in ("grain", "content"):
        # two steps, then resume to three: the resumed run continues the log
        run_dir = root / f"run-{part}"
        args = ["train", part, "--system", system, "--cache", cache, *FAST, "--run-dir", run_dir, "--save-to-system"]
        run_d2it(*args, "--steps", "2", check=0)
        run_d2it(*args, "--steps", "3", "--resume", "latest", check=0)
        assert [r["step"] for r in log(run_dir)] == [1, 2, 3]
    return root, system


def test_thresholds_and_latent_scale_are_recorded(trained):
    root, system = trained
    record = json.loads((system / "d2it.json").read_text())["system"]
    assert len(record["thresholds"]) == 1 and record["latent_scale"] > 0
    assert json.loads((root / "thresholds.json").read_text())


@pytest.mark.parametrize("sampler,cfg", [("ddpm", "1.0"), ("ddim", "1.5")])
def test_sampling_formats_ranges_and_determinism(d2it_cli, trained, tmp_path, sampler, cfg):
    _, system = trained
    common = ["sample", "--system", system, "--num", "3", "--steps", "3", "--sampler", sampler, "--cfg-scale", cfg]
    common += ["--class", "0,2", "--seed", "7", "--npz", "--quiet"]
    d2it_cli(*common, "--out", tmp_path / "a", check=0)
    d2it_cli(*common, "--out", tmp_path / "b", check=0)
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert a["arr_0"].shape == (3, 32, 32, 3) and a["arr_0"].dtype == np.uint8
    assert np.array_equal(a["arr_0"], b["arr_0"]) and list(a["labels"]) == [0, 2, 0]
    assert a["grain_maps"].shape == (3, 2, 2) and set(np.unique(a["grain_maps"])) <= {0, 1}
    assert len(list((tmp_path / "a" / "samples").glob("*.png"))) == 3 and (tmp_path / "a" / "grid.png").is_file()


def test_bad_class_is_one_sentence(d2it_cli, trained, tmp_path):
    _, system = trained
    proc = d2it_cli("sample", "--system", system, "--num", "1", "--class", "9", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "9" in proc.stderr.splitlines()[-1]
