"""`d2it train ... --config FILE`: YAML and JSON options, the command line over the file, replaying train.json."""

import json

import pytest

from d2it_cli.engine import read_log

DVAE = ["--lpips-random", "--quiet"]


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    return line


def test_yaml_options_and_the_command_line_over_them(tiny_system, tmp_path, run_cli):
    (tmp_path / "run.yaml").write_text(
        "# a DVAE run\ndata: synthetic:8\nsteps: 3\nbatch: 2\nlog-every: 1\nperceptual_weight: 0\n"
        "ema: true\nreport_to: none\ndata_option: [seed=5]\n"
    )
    result = run_cli("train", "dvae", "--system", tiny_system, "--config", tmp_path / "run.yaml", *DVAE,
                     "--steps", "2", "--run-dir", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]  # --steps 2 beat the file's 3
    recorded = json.loads((tmp_path / "run" / "train.json").read_text())
    assert recorded["batch"] == 2 and recorded["ema"] is True and recorded["log_every"] == 1
    options = recorded["options"]
    assert options["steps"] == 2 and options["data_option"] == ["seed=5"] and options["perceptual_weight"] == 0
    assert options["system_dir"] == str(tiny_system.resolve()) and "run_dir" not in options


def test_json_options_fill_in_required_ones(tiny_system, tmp_path, run_cli):
    doc = {"system": str(tiny_system), "data": "synthetic:8", "steps": 1, "batch": 2, "perceptual-weight": 0}
    (tmp_path / "run.json").write_text(json.dumps(doc))
    result = run_cli("train", "dvae", "--config", tmp_path / "run.json", *DVAE, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1]


@pytest.fixture
def encoded(tiny_system, tmp_path, run_cli):
    """(system directory, cache directory): a 12-image latent cache of the tiny system."""
    run_cli("thresholds", "--data", "synthetic:12", "--system", tiny_system, "--out", tmp_path / "t.json")
    cache = tmp_path / "cache"
    result = run_cli("encode", "--system", tiny_system, "--data", "synthetic:12", "--out", cache, "--quiet")
    assert result.exit_code == 0, result.output
    return tiny_system, cache


def test_train_json_replays_the_run_exactly(encoded, tmp_path, run_cli, monkeypatch):
    system, cache = encoded
    original = tmp_path / "original"
    result = run_cli("train", "content", "--system", system, "--cache", cache, "--steps", "3", "--batch", "3",
                     "--lr", "3e-4", "--fine-ratio", "0.3", "--grain-source", "random", "--log-every", "1",
                     "--ema-decay", "0.5", "--seed", "7", "--quiet", "--run-dir", original)  # fmt: skip
    assert result.exit_code == 0, result.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths were recorded as absolute ones
    replay = run_cli("train", "content", "--config", original / "train.json", "--run-dir", tmp_path / "replay")
    assert replay.exit_code == 0, replay.output
    a, b = read_log(original), read_log(tmp_path / "replay")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "mse", "vb", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    again = run_cli("train", "grain", "--config", original / "train.json", "--run-dir", tmp_path / "grain")
    assert "records a `d2it train content` run" in error_line(again)


@pytest.mark.parametrize(
    "name, text, expect",
    [
        ("typo.yaml", "stepz: 3\n", "'stepz' is not an option of"),
        ("typo.yaml", "stepz: 3\n", "did you mean steps?"),
        ("type.yaml", "steps: many\n", "steps: 'many' is not a valid integer"),
        ("range.json", '{"batch": 0}', "batch: 0 is not in the range"),
        ("list.yaml", "steps: [1, 2]\n", "steps takes a single value, not a list"),
        ("choice.yaml", "precision: fp8\n", "precision: 'fp8' is not one of"),
        ("twice.yaml", "kl_weight: 1\nreg_weight: 2\n", "sets reg_weight twice"),
        ("seq.yaml", "- steps\n", "must hold a mapping of option names to values, not a list"),
        ("bad.yaml", "steps: [1\n", "is not valid YAML"),
        ("bad.json", '{"steps": }', "is not valid JSON"),
        ("old.json", '{"task": "dvae", "steps": 2}', "an older d2it started"),
    ],
)
def test_a_bad_config_file_is_one_sentence_naming_the_key(tiny_system, tmp_path, run_cli, name, text, expect):
    (tmp_path / name).write_text(text)
    result = run_cli("train", "dvae", "--system", tiny_system, "--data", "synthetic:4", "--steps", "1",
                     "--config", tmp_path / name, *DVAE)  # fmt: skip
    line = error_line(result)
    assert expect in line and name in line
    assert not (tiny_system / "runs").exists()  # refused before anything started
