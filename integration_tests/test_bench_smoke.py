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
