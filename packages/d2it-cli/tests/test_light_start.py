"""`d2it --help` and `d2it plugins` start light: which modules they import, checked in a fresh interpreter."""

import json
import subprocess
import sys

import click

from d2it_cli.commands import LAZY_COMMANDS, load_command

PROBE = """
import json, sys
from d2it_cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
HEAVY = ("torchvision", "torch_fidelity", "lpips", "diffusers", "huggingface_hub", "webdataset", "datasets", "wandb")
MODEL_CODE = ("d2it_vae.", "d2it_transformers.", "d2it_sampling.", "d2it_cli.commands.", "d2it_cli.evaluation")


def imported_by(*argv) -> tuple[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


def test_help_imports_no_torch_and_no_model_code():
    out, modules = imported_by("--help")
    assert "sample" in out and "plugins" in out
    assert "torch" not in modules, "d2it --help imported torch"
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    # the plugin modules, and main's error reporting (click and errno only)
    plugins_only = {"d2it_vae.plugin", "d2it_transformers.plugin", "d2it_sampling.plugin", "d2it_cli.commands.failures"}
    model = [m for m in modules if m.startswith(MODEL_CODE) and m not in plugins_only]
    assert not model, f"d2it --help imported {model}"


def test_plugins_imports_no_torch_fidelity_or_torchvision():
    out, modules = imported_by("plugins", "--kind", "metric")
    assert "fid" in out and "torch-fidelity" in out
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_lazy_command_help_matches_the_commands():
    for name in LAZY_COMMANDS:
        command = load_command(name)
        assert isinstance(command, click.Command) and command.name == name
        assert command.get_short_help_str(500) == LAZY_COMMANDS[name][1]
