"""Two fresh processes with the same seed and the GAN active train to identical losses."""

import json
import shutil
import subprocess
import sys
from pathlib import Path


def _train(system, run_dir):
    d2it = Path(sys.executable).with_name("d2it")
    cmd = [
        str(d2it) if d2it.exists() else shutil.which("d2it"),
        "train",
        "dvae",
        "--system",
        str(system),
        "--data",
        "synthetic:8",
        "--steps",
        "4",
        "--batch",
        "2",
        "--disc-start",
        "0",
        "--lpips-random",
        "--log-every",
        "1",
        "--quiet",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--run-dir",
        str(run_dir),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_gan_training_is_identical_in_two_fresh_processes(tiny_system, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_system, other)
    a, b = _train(tiny_system, tmp_path / "a"), _train(other, tmp_path / "b")
    keys = ("loss", "d_loss", "g_loss", "l1")
    assert len(a) == len(b) == 4
    assert all(r["d_loss"] != 0 for r in a)  # the discriminator is active from step 0
    for ra, rb in zip(a, b):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}, (ra, rb)
