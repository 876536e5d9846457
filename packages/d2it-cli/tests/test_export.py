"""`d2it export`: a loadable system from any checkpoint (EMA or raw), and `--every` scoring each checkpoint in turn."""

import json

import numpy as np
import pytest
import torch
from test_evaluation import TINY, TinyExtractor, make_images, register_tiny

from d2it import system as systems
from d2it.io import load_safetensors
from d2it_cli.engine import load_checkpoint
from d2it_cli.engine.checkpoint import checkpoint_root


@pytest.fixture
def grain_run(tiny_system, tmp_path, run_cli):
    """(system, run directory): the tiny grain transformer trained 2 steps, a checkpoint after each."""
    run_cli("thresholds", "--data", "synthetic:8", "--system", tiny_system, "--out", tmp_path / "t.json")
    cache = tmp_path / "cache"
    assert run_cli("encode", "--system", tiny_system, "--data", "synthetic:8", "--out", cache, "--quiet").exit_code == 0
    args = ["train", "grain", "--system", tiny_system, "--cache", cache, "--batch", "4", "--steps", "2"]
    result = run_cli(*args, "--ckpt-every", "1", "--ema-decay", "0.5", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    return tiny_system, tiny_system / "runs" / "grain"


def test_export_writes_the_ema_or_raw_weights_of_a_step(grain_run, tmp_path, run_cli):
    system, run = grain_run
    result = run_cli("export", "--run", run, "--step", "1", "--out", tmp_path / "ema1")
    assert result.exit_code == 0, result.output
    assert "exported step 1 (grain: ema)" in result.output
    assert run_cli("export", "--run", run, "--step", "1", "--no-ema", "--out", tmp_path / "raw1").exit_code == 0
    weights, state, _ = load_checkpoint(checkpoint_root(run) / "step-0000001", need_rng=False)
    ema, _ = load_safetensors(tmp_path / "ema1" / "grain.safetensors")
    raw, _ = load_safetensors(tmp_path / "raw1" / "grain.safetensors")
    assert all(torch.equal(raw[k], weights["grain"][k]) for k in raw)
    assert all(torch.equal(ema[k], state["ema"]["grain"][k].to(ema[k].dtype)) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    # every other part and the record come from the run's system; the export is loadable and says where it came from
    for part in ("vae", "content"):
        assert (tmp_path / "ema1" / f"{part}.safetensors").read_bytes() == (system / f"{part}.safetensors").read_bytes()
    loaded = systems.load(tmp_path / "ema1")
    assert loaded.grain is not None
    _, doc = systems.read_record(tmp_path / "ema1")
    assert doc["extra"]["exported_from"]["step"] == 1 and doc["extra"]["exported_from"]["weights"] == {"grain": "ema"}
    sample = run_cli("sample", "--system", tmp_path / "ema1", "--num", "2", "--steps", "2", "--out", tmp_path / "s")
    assert sample.exit_code == 0, sample.output
    # latest is the final step; a missing step lists the ones there are
    assert run_cli("export", "--run", run, "--out", tmp_path / "last").exit_code == 0
    assert json.loads((tmp_path / "last" / "d2it.json").read_text())["extra"]["exported_from"]["step"] == 2
    bad = run_cli("export", "--run", run, "--step", "7", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "no checkpoint at step 7; it has steps 1, 2" in bad.output
    again = run_cli("export", "--run", run, "--step", "1", "--out", tmp_path / "ema1")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_export_every_scores_each_checkpoint_once(grain_run, tmp_path, run_cli):
    _, run = grain_run
    register_tiny()
    weights = tmp_path / "tiny.pth"
    torch.save(TinyExtractor(TINY, ["feat"]).state_dict(), weights)
    np.savez(tmp_path / "r.npz", make_images(n=4, size=32, seed=8))
    score = (
        f"--ref {tmp_path / 'r.npz'} --num 4 --metrics fid --steps 2 --batch 4 --device cpu "
        f"--feature-extractor {TINY} --inception-weights {weights} --quiet"
    )
    out = tmp_path / "curve"
    result = run_cli("export", "--run", run, "--every", "--out", out, "--score", score)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(line["metrics"]["fid"] > 0 and line["weights"] == {"grain": "ema"} for line in lines)
    assert (out / "step-0000002" / "d2it.json").is_file()
    # a second run finds every checkpoint scored and adds nothing
    assert run_cli("export", "--run", run, "--every", "--out", out, "--score", score).exit_code == 0
    assert len((out / "scores.jsonl").read_text().splitlines()) == 2


def test_export_never_deletes_a_folder_it_did_not_write(grain_run, tmp_path, run_cli):
    _, run = grain_run
    user = tmp_path / "photos"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    for extra in ([], ["--overwrite"]):
        result = run_cli("export", "--run", run, "--out", user, *extra)
        assert result.exit_code == 2 and "holds no d2it system" in result.output, result.output
        assert {p.name: p.read_bytes() for p in user.iterdir()} == before
    every = run_cli("export", "--run", run, "--every", "--out", user)
    assert every.exit_code == 2 and "not empty and was not written by d2it" in every.output
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before
