"""`d2it sample` and `d2it eval sample-and-score` take the same sampling options and hand them on alike."""

import pytest

from d2it_cli.commands import evaluate, load_command
from d2it_cli.commands import sample as sample_module
from d2it_cli.commands.sampling import FIELDS

SAMPLING = ["--classes-uniform", "--steps", 4, "--sampler", "ddim", "--cfg-scale", 0.5, "--grain-cfg-scale", 2,
            "--seed", 3, "--batch", 5]  # fmt: skip
EXPECTED = {"classes_uniform": True, "steps": 4, "sampler": "ddim", "cfg_scale": 0.5, "grain_cfg_scale": 2.0,
            "seed": 3, "batch": 5}  # fmt: skip


def _options(command) -> dict:
    return {p.name: p for p in command.params if p.name in FIELDS}


def test_both_commands_declare_the_same_options():
    sample, score = load_command("sample"), load_command("eval").commands["sample-and-score"]
    mine, theirs = _options(sample), _options(score)
    assert set(mine) == set(theirs) == set(FIELDS)
    for name in FIELDS:
        a, b = mine[name], theirs[name]
        assert (a.opts, a.help, a.is_flag, a.show_default, repr(a.type)) == (
            b.opts, b.help, b.is_flag, b.show_default, repr(b.type)
        )  # fmt: skip
        assert a.default == b.default or name == "batch"  # each command keeps its own --batch default
    assert (mine["batch"].default, theirs["batch"].default) == (16, 32)


@pytest.fixture
def captured(monkeypatch):
    """The SampleSettings each command builds, its work replaced by a recorder."""
    seen = {}

    def sample_images(system_dir, out, settings, **kwargs):
        seen["sample"] = settings

    def sample_and_score(system_dir, ref, claim, sampling, *args, **kwargs):
        seen["sample-and-score"] = sampling

    monkeypatch.setattr(sample_module.generation, "sample_images", sample_images)
    monkeypatch.setattr(evaluate.protocols, "sample_and_score", sample_and_score)
    return seen


def test_the_options_reach_the_sample_settings(run_cli, captured, tiny_system, tmp_path):
    assert run_cli("sample", "--system", tiny_system, "--num", 6, *SAMPLING, "--out", tmp_path / "s").exit_code == 0
    result = run_cli("eval", "sample-and-score", "--system", tiny_system, "--ref", tmp_path, "--num", 6,
                     "--metrics", "swd", *SAMPLING, "--out", tmp_path / "e")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("sample", "sample-and-score"):
        settings = captured[name]
        assert {field: getattr(settings, field) for field in FIELDS} == EXPECTED
        assert settings.num == 6
