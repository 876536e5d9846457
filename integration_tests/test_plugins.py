"""A third-party plugin installed from its folder, next to a broken one."""

import json
import subprocess
import sys

# `d2it plugins` in a fresh interpreter, reporting which modules it imported (last line of stderr)
PROBE = """
import json, sys
from d2it_cli.main import main
try:
    main(["plugins"])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
BROKEN_WARNING = "warning: d2it plugin d2it-broken-plugin 0.0.1 failed to load and was skipped"


def test_plugins_lists_the_example_with_its_version(d2it_cli):
    proc = d2it_cli("plugins", "--json", check=0)
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    example = rows[("backbone", "example-tiny")]
    assert (example["provider"], example["version"]) == ("d2it-example-plugin", "0.3.0")
    assert rows[("backbone", "dit-xl")]["provider"] == "d2it-transformers"


def test_listing_imports_none_of_the_example_components():
    # the example names its factories and configs by "module:attr" references (the documented way), so
    # `d2it plugins` imports its entry-point module but not its components, nor torch
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    modules = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "example-trapezoid" in proc.stdout and "d2it_example_plugin" in modules
    assert "d2it_example_plugin.components" not in modules and "torch" not in modules


def test_broken_plugin_gives_one_warning_and_everything_works(d2it_cli):
    proc = d2it_cli("--help", check=0)
    assert proc.stderr.count(BROKEN_WARNING) == 1
    assert "build" in proc.stdout and "example-hello" in proc.stdout


def test_disabling_and_no_plugins(d2it_cli):
    quiet = d2it_cli("plugins", env={"D2IT_DISABLE_PLUGINS": "d2it-broken-plugin"}, check=0)
    assert "failed to load" not in quiet.stderr and "example-tiny" in quiet.stdout
    builtins = d2it_cli("--no-plugins", "plugins", check=0)
    assert "example-tiny" not in builtins.stdout and "failed to load" not in builtins.stderr
    assert "dit-xl" in builtins.stdout


def test_plugin_command(d2it_cli):
    assert d2it_cli("example-hello", check=0).stdout.strip() == "hello from d2it-example-plugin"


def test_build_with_the_plugin_backbone(d2it_cli, tmp_path):
    proc = d2it_cli(
        "build",
        "--backbone",
        "example-tiny",
        "--image-size",
        "32",
        "--set",
        "backbone.width=8",
        "--json",
        "--out",
        tmp_path / "m",
        check=0,
    )
    doc = json.loads(proc.stdout)
    assert doc["providers"]["backbone"] == "d2it-example-plugin 0.3.0"
    assert doc["parts"][0]["params"] > 0
    again = json.loads(d2it_cli("build", "--from", tmp_path / "m", "--json", check=0).stdout)
    assert again["parts"] == doc["parts"] and again["system"] == doc["system"]
