"""A smoke run of one small benchmark through the runner `nox -s bench` uses."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sparse_benchmark_quick_run():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "sparse", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| fine ratio |" in proc.stdout
    result = json.loads((ROOT / "benchmarks" / "results" / "sparse-quick.json").read_text())
    assert result  # the quick run wrote its own file, leaving the committed full results alone


def test_runner_rejects_unknown_benchmarks():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "nonexistent"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "available:" in proc.stderr


def test_paper_benchmark_dry_run(tmp_path):
    """The real-images benchmark's GPU profile at tiny sizes, on a few OpenMoji images: its code path end to end."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "paper", "--quick", "--profile", "gpu", "--seeds", "0",
         "--data-option", "limit=40", "--device", "cpu", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((ROOT / "benchmarks" / "results" / "paper-gpu-quick.json").read_text())
    models = {row["model"] for row in result["stage2"]}
    assert {"DiT-S/2, equal steps", "DiT-S/2, equal compute", "routing only (--refine none)"} <= models
    assert any("random maps" in m for m in models) and any("all-coarse" in m for m in models)
    assert set(result["stage1"]) == {
        "DVAE (8x/16x), logvar fixed", "DVAE (8x/16x), logvar learned", "KL-AE 8x", "KL-AE 16x"
    }  # fmt: skip
    for row in result["stage2"]:
        assert row["swd"] > 0 and {"swd_64", "swd_32", "swd_16"} <= set(row)
    # equal compute: DiT trains for the D²iT's steps times the ratio of their forward GMACs
    steps, gmacs = result["steps"], result["gmacs"]
    assert steps["dit_equal_compute"] == round(steps["d2it"] * gmacs["d2it"] / gmacs["dit"])
    assert (ROOT / "benchmarks" / "results" / "paper-gpu-quick-grid.png").stat().st_size > 0
