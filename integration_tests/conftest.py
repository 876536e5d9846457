"""Helpers for integration tests: run the installed `d2it` console script."""

import os
import shutil
import subprocess

import pytest


@pytest.fixture
def d2it_cli():
    """Run `d2it ARGS...` as a user would; returns the CompletedProcess."""
    exe = shutil.which("d2it")
    assert exe, "the d2it console script is not installed"

    def run(*args, env=None, check=None):
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=900)
        if check is not None:
            assert proc.returncode == check, proc.stdout + proc.stderr
        return proc

    return run
