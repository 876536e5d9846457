"""A handful of probes through the real `d2it` console script: the same exit code and stderr as in-process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check, expand, run_main

PROBES = [
    "build --backbone dit-xxl",
    "build --backbone dit-s --image-size 32 --no-count --set schedule.num_timesteps=0",
    "train dvae --system {sys} --data synthetic:4 --lr inf",
    "train grain --system {cache_sys} --cache {cache_escape} --steps 1 --batch 2 --run-dir {tmp}/run",
    "sample --system {sys_nanscale} --out {tmp}/o --num 1 --steps 1",
    "sample --system {sys} --out {tmp}/o --device cuda:3",
    "eval gen --samples {renamed_npz} --ref {good_npz}",
    "encode --system {sys} --data synthetic:4 --out {file}/cache",
]


def _console_script() -> str:
    found = Path(sys.executable).with_name("d2it")
    return str(found) if found.exists() else shutil.which("d2it")


@pytest.mark.parametrize("command", PROBES)
def test_console_script_agrees_with_the_in_process_run(paths, command):
    argv = expand(command, paths)
    inproc = run_main(argv)
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([_console_script(), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == inproc.code == 2, proc.stderr
    assert proc.stderr == inproc.err
    check(inproc)
