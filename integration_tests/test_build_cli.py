"""`d2it build` as a user runs it: sizes, saving, loading and bad input."""

import json

import pytest


@pytest.mark.parametrize(
    "backbone,params_m,gmacs",
    [("dit-b", 130.3, 23.01), ("dit-l", 457.8, 80.70)],
)
def test_dit_sizes_match_the_paper(d2it_cli, backbone, params_m, gmacs):
    doc = json.loads(d2it_cli("build", "--backbone", backbone, "--json", check=0).stdout)
    (part,) = doc["parts"]
    assert abs(part["params_m"] - params_m) / params_m < 0.005
    assert abs(part["gmacs"] - gmacs) / gmacs < 0.005


def test_unknown_backbone_is_one_sentence_exit_2(d2it_cli):
    proc = d2it_cli("build", "--backbone", "dit-xxl")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown backbone 'dit-xxl'; valid backbones: ")
    assert "dit-xl/1" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_option_value_and_name(d2it_cli):
    bad = d2it_cli("build", "--backbone", "dit-s", "--set", "backbone.depth=abc")
    assert bad.returncode == 2 and "backbone.depth expects int or none, got 'abc'" in bad.stderr
    unknown = d2it_cli("build", "--backbone", "dit-s", "--set", "backbone.dpth=2")
    assert unknown.returncode == 2 and "backbone has no option 'dpth'" in unknown.stderr


def test_out_and_from_round_trip(d2it_cli, tmp_path):
    args = [
        "build",
        "--backbone",
        "dit-s",
        "--image-size",
        "64",
        "--num-classes",
        "1",
        "--set",
        "backbone.depth=2",
        "--json",
    ]
    first = json.loads(d2it_cli(*args, "--out", tmp_path / "m", check=0).stdout)
    assert (tmp_path / "m" / "d2it.json").is_file() and (tmp_path / "m" / "content.safetensors").is_file()
    second = json.loads(d2it_cli("build", "--from", tmp_path / "m", "--json", check=0).stdout)
    assert first["system"] == second["system"] and first["parts"] == second["parts"]


def test_from_missing_or_mismatched_directory(d2it_cli, tmp_path):
    missing = d2it_cli("build", "--from", tmp_path / "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    d2it_cli(
        "build",
        "--backbone",
        "dit-s",
        "--image-size",
        "64",
        "--set",
        "backbone.depth=2",
        "--out",
        tmp_path / "m",
        "--no-count",
        check=0,
    )
    doc = json.loads((tmp_path / "m" / "d2it.json").read_text())
    doc["system"]["options"]["backbone"]["hidden_size"] = 192
    (tmp_path / "m" / "d2it.json").write_text(json.dumps(doc))
    bad = d2it_cli("build", "--from", tmp_path / "m")
    assert bad.returncode == 2 and "has shape" in bad.stderr and "Traceback" not in bad.stderr


def test_debug_shows_the_traceback(d2it_cli):
    proc = d2it_cli("--debug", "build", "--backbone", "dit-xxl")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
