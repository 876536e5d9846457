"""A plugin written against d2it 0.1.0 (frozen_plugin_v0_1, never updated) works with this d2it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

FROZEN = Path(__file__).parent / "frozen_plugin_v0_1"
TINY = [
    "--vae", "vae-f8", "--backbone", "frozen-tiny", "--image-size", "32", "--num-classes", "4", "--no-count",
    "--set", "backbone.width=8", "--set", "vae.base_width=8", "--set", "vae.norm_groups=4",
    "--set", "vae.num_res_blocks=1", "--set", "vae.attn_levels=0",
]  # fmt: skip


def test_the_frozen_plugin_passes_its_own_tests():
    # as the plugin's author would run them: its own tests folder against the installed d2it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(FROZEN / "tests")],
        capture_output=True,
        text=True,
        cwd=FROZEN,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed", summary) and "failed" not in summary and "skipped" not in summary, summary


def test_sampling_with_its_sampler_that_owns_a_spacing_option(d2it_cli, tmp_path):
    # `frozen-strided` has its own `spacing` option ("uniform" / "logsnr"), which d2it must leave to it
    system = tmp_path / "system"
    d2it_cli("build", *TINY, "--sampler", "frozen-strided", "--set", "sampler.spacing=logsnr", "--out", system, check=0)
    common = ["sample", "--system", system, "--num", "2", "--steps", "4", "--seed", "3", "--npz", "--quiet"]
    d2it_cli(*common, "--out", tmp_path / "logsnr", check=0)
    d2it_cli(*common, "--set", "sampler.spacing=uniform", "--out", tmp_path / "uniform", check=0)
    settings = json.loads((tmp_path / "logsnr" / "samples.json").read_text())
    assert settings["sampler"] == "frozen-strided" and settings["sampler_options"]["spacing"] == "logsnr"
    logsnr, uniform = (np.load(tmp_path / name / "samples.npz")["arr_0"] for name in ("logsnr", "uniform"))
    assert logsnr.shape == uniform.shape == (2, 32, 32, 3)
    # d2it's own spacing names are not this sampler's values: its own validator answers, in one sentence
    proc = d2it_cli(*common, "--set", "sampler.spacing=karras", "--out", tmp_path / "bad", check=2)
    assert "spacing must be 'uniform' or 'logsnr'" in proc.stderr and "Traceback" not in proc.stderr


def test_version_lists_the_installed_plugins(d2it_cli):
    lines = d2it_cli("--version", check=0).stdout.splitlines()
    assert lines[0].startswith("d2it 0.1.0 (plugin API ")
    assert {"  d2it-frozen-plugin-v0-1 0.3.0", "  d2it-example-plugin 0.3.0"} <= set(lines)
