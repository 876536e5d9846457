"""A third-party plugin installed from its folder, next to a broken one."""

import json

BROKEN_WARNING = "warning: d2it plugin d2it-broken-plugin 0.0.1 failed to load and was skipped"


def test_plugins_lists_the_example_with_its_version(d2it_cli):
    proc = d2it_cli("plugins", "--json", check=0)
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    example = rows[("backbone", "example-tiny")]
    assert (example["provider"], example["version"]) == ("d2it-example-plugin", "0.3.0")
    assert rows[("backbone", "dit-xl")]["provider"] == "d2it-transformers"


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
