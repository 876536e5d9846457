"""The `d2it` group, `d2it plugins` and `d2it build` through click's test runner."""

import json

import pytest
from click.testing import CliRunner

import d2it
from d2it_cli.main import load_registry, main, make_cli

TINY = [
    "--backbone",
    "dit-s",
    "--image-size",
    "32",
    "--set",
    "backbone.depth=1",
    "--set",
    "backbone.hidden_size=32",
    "--set",
    "backbone.num_heads=2",
]


@pytest.fixture(scope="module")
def cli():
    return make_cli(load_registry())


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_version(cli):
    result = invoke(cli, "--version")
    assert result.exit_code == 0 and result.output.startswith("d2it 0.1.0")


def test_plugins_json_and_kind_filter(cli):
    rows = json.loads(invoke(cli, "plugins", "--json").output)
    kinds = {r["kind"] for r in rows}
    assert {"vae", "backbone", "refiner", "sampler", "schedule", "attention", "grain_predictor"} <= kinds
    only = json.loads(invoke(cli, "plugins", "--kind", "sampler", "--json").output)
    assert [r["name"] for r in only] == ["ddim", "ddpm", "dpmpp-2m", "dpmpp-2m-sde", "euler", "heun"]
    assert all(r["provider"] == "d2it-sampling" for r in only)


def test_build_table_and_json(cli):
    table = invoke(cli, "build", *TINY)
    assert table.exit_code == 0 and "content" in table.output and "GMACs" in table.output
    doc = json.loads(invoke(cli, "build", *TINY, "--set", "system.num_classes=1", "--json").output)
    assert doc["system"]["num_classes"] == 1 and doc["system"]["options"]["backbone"]["depth"] == 1
    assert doc["total"]["params"] == doc["parts"][0]["params"] > 0


def test_build_d2it_counts_every_part(cli):
    doc = json.loads(
        invoke(
            cli,
            "build",
            *TINY,
            "--refine",
            "window4",
            "--set",
            "grain.depth=1",
            "--set",
            "grain.hidden_size=32",
            "--set",
            "grain.num_heads=2",
            "--json",
        ).output
    )
    assert [p["part"] for p in doc["parts"]] == ["grain", "content"]
    assert doc["system"]["grain"] == "dgt-s" and doc["providers"]["refine"].startswith("d2it-transformers")


def test_build_errors_exit_2(cli):
    bad = CliRunner().invoke(cli, ["build", "--backbone", "dit-xxl"])
    assert bad.exit_code == 2 and "valid backbones: dit-b, dit-b/1" in bad.output
    bad = CliRunner().invoke(cli, ["build", *TINY, "--set", "system.colour=red"])
    assert bad.exit_code == 2 and "system has no option 'colour'" in bad.output
    bad = CliRunner().invoke(cli, ["build", *TINY, "--set", "nonsense"])
    assert bad.exit_code == 2 and "slot.option=value" in bad.output


def test_main_reports_errors_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["build", "--backbone", "dit-xxl"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone") and "Traceback" not in err


VAE_TINY = ["--vae", "dvae-kl", "--set", "vae.base_width=8", "--set", "vae.norm_groups=4",
            "--set", "vae.num_res_blocks=1", "--set", "vae.attn_levels=0"]  # fmt: skip


def test_regularizer_options_have_their_own_slot(cli, tmp_path):
    out = tmp_path / "fsq"
    args = ["build", *TINY, *VAE_TINY, "--set", "vae.regularizer=fsq", "--set", "regularizer.levels=8,8,8,8"]
    doc = json.loads(invoke(cli, *args, "--no-count", "--json", "--out", out).output)
    assert doc["system"]["options"]["regularizer"] == {"levels": [8, 8, 8, 8], "eps": 1e-3, "loss_weight": 1.0}
    assert doc["providers"]["regularizer"].startswith("d2it-vae ")
    saved = json.loads((out / "d2it.json").read_text())
    assert saved["providers"]["regularizer"] == {
        "kind": "regularizer", "name": "fsq", "dist": "d2it-vae", "version": saved["versions"]["d2it-vae"]
    }  # fmt: skip
    assert saved["providers"]["backbone"]["dist"] == "d2it-transformers"
    table = invoke(cli, "build", "--from", out, "--no-count").output
    assert "regularizer" in table and "fsq" in table and "d2it-vae" in table
    # the options reach the regularizer, and the loss weight is one of them
    vq = json.loads(invoke(cli, "build", *TINY, *VAE_TINY, "--set", "vae.regularizer=vq",
                           "--set", "regularizer.codebook_size=16", "--set", "regularizer.loss_weight=0.5",
                           "--no-count", "--json").output)  # fmt: skip
    assert vq["system"]["options"]["regularizer"]["codebook_size"] == 16
    bad = CliRunner().invoke(cli, ["build", *TINY, *VAE_TINY, "--set", "regularizer.levels=8,8,8,8"])
    assert bad.exit_code == 2 and "regularizer has no option 'levels'" in bad.output
    bad = CliRunner().invoke(cli, ["build", *TINY, "--set", "regularizer.levels=8,8,8,8"])
    assert bad.exit_code == 2 and "does not use" in bad.output


def test_a_missing_provider_names_the_distribution_to_install(cli, tmp_path):
    out = tmp_path / "system"
    invoke(cli, "build", *TINY, "--no-count", "--out", out)
    doc = json.loads((out / "d2it.json").read_text())
    doc["system"]["sampler"] = "ghost-sampler"
    doc["system"]["options"]["sampler"] = {}
    doc["providers"]["sampler"] = {"kind": "sampler", "name": "ghost-sampler", "dist": "d2it-ghost", "version": "1.2"}
    (out / "d2it.json").write_text(json.dumps(doc))
    bad = CliRunner().invoke(cli, ["build", "--from", out, "--no-count"])
    assert bad.exit_code == 2
    assert "sampler 'ghost-sampler' from d2it-ghost 1.2" in bad.output and "pip install 'd2it-ghost==1.2'" in bad.output
    del doc["providers"]
    (out / "d2it.json").write_text(json.dumps(doc))
    bad = CliRunner().invoke(cli, ["build", "--from", out, "--no-count"])
    assert bad.exit_code == 2 and "unknown sampler 'ghost-sampler'; valid samplers: ddim" in bad.output


class BrokenReferencePlugin:
    """A plugin whose backbone is registered by a reference to a module that is not installed."""

    @d2it.hookimpl
    def d2it_backbones(self):
        return [d2it.ComponentSpec("ghost-net", "backbone", "d2it_ghost.model:GhostNet", summary="not installed")]


def test_a_reference_that_does_not_import_exits_2_naming_the_distribution():
    registry = load_registry(builtins_only=True)
    registry.register(BrokenReferencePlugin(), "ghost", dist="d2it-ghost", version="1.2")
    cli = make_cli(registry)
    listed = {r["name"]: r for r in json.loads(invoke(cli, "plugins", "--kind", "backbone", "--json").output)}
    assert (listed["ghost-net"]["provider"], listed["ghost-net"]["version"]) == ("d2it-ghost", "1.2")
    bad = CliRunner().invoke(cli, ["build", "--backbone", "ghost-net", "--image-size", "32", "--no-count"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.output.strip() == (
        "error: backbone 'ghost-net' from d2it-ghost 1.2 cannot be loaded: its factory 'd2it_ghost.model:GhostNet' "
        "does not import (ModuleNotFoundError: No module named 'd2it_ghost'); reinstall or upgrade d2it-ghost"
    )
