"""Shared fixtures: the `d2it` CLI on the installed registry and a tiny 32-pixel D²iT system."""

import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from d2it_cli.main import load_registry, make_cli

os.environ.setdefault("D2IT_OFFLINE", "1")  # tests never download pretrained weights

# a dvae-kl of base width 8 and a two-layer content transformer: 32x32 images, 4x4x4 latents, 2x2 grain maps
TINY_SETS = [
    "vae.base_width=8", "vae.norm_groups=4", "vae.num_res_blocks=1", "vae.attn_levels=0",
    "backbone.depth=2", "backbone.hidden_size=32", "backbone.num_heads=2",
    "grain.depth=1", "grain.hidden_size=32", "grain.num_heads=2",
]  # fmt: skip


@pytest.fixture(scope="session")
def d2it_registry():
    """Every installed plugin, loaded once."""
    return load_registry()


@pytest.fixture(scope="session")
def d2it_cli(d2it_registry):
    """The `d2it` group built by `make_cli`."""
    return make_cli(d2it_registry)


@pytest.fixture
def run_cli(d2it_cli):
    """Invoke `d2it ARGS...` in-process; returns the click Result."""
    torch.set_num_threads(2)

    def invoke(*args):
        return CliRunner().invoke(d2it_cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def tiny_system_template(d2it_cli, tmp_path_factory):
    """A freshly built tiny system directory (built once per session)."""
    out = tmp_path_factory.mktemp("tiny") / "system"
    args = [
        "build",
        "--vae",
        "dvae-kl",
        "--backbone",
        "dit-s",
        "--refine",
        "window16",
        "--grain",
        "dgt-s",
        "--image-size",
        "32",
        "--num-classes",
        "4",
        "--no-count",
        "--out",
        str(out),
    ]
    for item in TINY_SETS:
        args += ["--set", item]
    result = CliRunner().invoke(d2it_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def tiny_system(tiny_system_template, tmp_path):
    """A private copy of the tiny system."""
    dest = tmp_path / "system"
    shutil.copytree(tiny_system_template, dest)
    return dest
