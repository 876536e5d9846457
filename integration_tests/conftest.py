"""Helpers for integration tests: run the installed `d2it` console script."""

import os
import shutil
import subprocess

import pytest


def run_d2it(*args, env=None, check=None):
    """Run `d2it ARGS...` as a user would; returns the CompletedProcess (asserting its exit code if `check`)."""
    exe = shutil.which("d2it")
    assert exe, "the d2it console script is not installed"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=900)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def d2it_cli():
    """`run_d2it` as a fixture."""
    return run_d2it
