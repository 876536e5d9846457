"""Sharded sampling (`d2it_cli.generation`) and the `d2it sample` command."""

import json
import types

import numpy as np
import pytest
import torch

from d2it import dist
from d2it import system as systems
from d2it.errors import D2itError
from d2it_cli import generation, outputs
from d2it_cli.images import load_png, to_uint8
from d2it_sampling.pipeline import generate

# -- sharding logic, with a stand-in for the generation pipeline --------------------------------------


class FakeSystem(torch.nn.Module):
    """Just enough of a System for `sample_to_dir`: a record and one weight module."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.record = systems.SystemRecord(backbone="dit-s", num_classes=num_classes, image_size=16)
        self.content = torch.nn.Linear(2, 2)

    def weight_modules(self):
        return {"content": self.content}


@pytest.fixture
def fake_generate(monkeypatch):
    """Replace the pipeline by a seeded random image generator that records its calls."""
    calls = []

    def generate(system, classes, *, seed, batch_size, first_index=0, **kwargs):
        calls.append({"seed": seed, "classes": classes.tolist(), "first_index": first_index, **kwargs})
        images, grain_maps = [], []
        for i in range(len(classes)):  # like the pipeline: sample i from (seed, global index) alone
            g = torch.Generator().manual_seed(seed * 100_003 + first_index + i)
            images.append(torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
            grain_maps.append(torch.randint(0, 2, (1, 1, 1), generator=g))
        return types.SimpleNamespace(images=torch.cat(images), grain_maps=torch.cat(grain_maps), latents=None)

    monkeypatch.setattr(generation, "generate", generate)
    return calls


def test_draw_labels_modes():
    assert generation.draw_labels(5, 10, classes=[3, 7]).tolist() == [3, 7, 3, 7, 3]
    assert generation.draw_labels(5, 3, classes_uniform=True).tolist() == [0, 1, 2, 0, 1]
    assert generation.draw_labels(4, 1).tolist() == [0, 0, 0, 0]
    a = generation.draw_labels(50, 10, seed=1)
    assert torch.equal(a, generation.draw_labels(50, 10, seed=1))
    assert not torch.equal(a, generation.draw_labels(50, 10, seed=2))
    assert a.min() >= 0 and a.max() < 10


@pytest.mark.parametrize(
    "kwargs",
    [dict(classes=[10]), dict(classes=[-1]), dict(classes=[]), dict(classes=[1], classes_uniform=True)],
)
def test_draw_labels_errors(kwargs):
    with pytest.raises(generation.ClassError):
        generation.draw_labels(3, 10, **kwargs)


def test_parse_classes():
    assert generation.parse_classes("0, 5,7") == [0, 5, 7]
    assert generation.parse_classes(None) is None and generation.parse_classes(" ") is None
    with pytest.raises(generation.ClassError):
        generation.parse_classes("1,x")


def draw(system, num, out, *, resume=True, keep_shards=True, **settings):
    """`sample_to_dir` with `SampleSettings(num, **settings)`, quietly; the path of samples.npz."""
    settings = generation.SampleSettings(num=num, **settings)
    samples = generation.sample_to_dir(system, out, settings, progress=False, resume=resume, keep_shards=keep_shards)
    return None if samples is None else samples.npz  # None on ranks other than 0


def test_sample_to_dir_npz_format(tmp_path, fake_generate):
    system = FakeSystem()
    path = draw(system, 7, tmp_path, batch=3, classes=[2, 1], seed=5, steps=4)
    data = generation.load_samples(path)
    assert path == tmp_path / "samples.npz"
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (7, 16, 16, 3)
    assert data["labels"].tolist() == [2, 1, 2, 1, 2, 1, 2]
    assert data["grain_maps"].shape == (7, 1, 1)
    assert len(fake_generate) == 3 and [len(c["classes"]) for c in fake_generate] == [3, 3, 1]
    # every shard uses the run seed and its global offset: sample i depends on (seed, i) alone
    assert [(c["seed"], c["first_index"]) for c in fake_generate] == [(5, 0), (5, 3), (5, 6)]
    assert all(c["steps"] == 4 and c["cfg_scale"] == 1.5 for c in fake_generate)
    # np.load with the ADM suite's key
    with np.load(path) as f:
        assert f["arr_0"].shape == (7, 16, 16, 3)
    assert json.loads((tmp_path / "samples.json").read_text())["num"] == 7


def test_resume_skips_finished_shards(tmp_path, fake_generate):
    system = FakeSystem()
    first = generation.load_samples(draw(system, 6, tmp_path, batch=2))
    (tmp_path / "shards" / "shard-000001.npz").unlink()
    (tmp_path / "shards" / "shard-000002.npz").write_bytes(b"truncated")
    fake_generate.clear()
    again = generation.load_samples(draw(system, 6, tmp_path, batch=2))
    assert len(fake_generate) == 2  # only the missing and the corrupt shard
    assert np.array_equal(first["arr_0"], again["arr_0"])
    fake_generate.clear()
    draw(system, 6, tmp_path, batch=2, resume=False)
    assert len(fake_generate) == 3


def test_resume_refuses_other_settings(tmp_path, fake_generate):
    system = FakeSystem()
    draw(system, 4, tmp_path, batch=2, seed=0)
    with pytest.raises(D2itError, match="seed"):
        draw(system, 4, tmp_path, batch=2, seed=1)
    with torch.no_grad():
        system.content.weight.add_(1.0)
    with pytest.raises(D2itError, match="system"):
        draw(system, 4, tmp_path, batch=2, seed=0)


def test_world_size_does_not_change_samples(tmp_path, fake_generate, monkeypatch):
    system = FakeSystem()
    single = generation.load_samples(draw(system, 5, tmp_path / "one", batch=2))
    # two ranks run one after another (barriers are no-ops outside a process group)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    fake_generate.clear()
    # rank 0 claims the folder and records every shard before the others start
    shards = [f"shards/shard-{i:06d}.npz" for i in range(3)]
    outputs.claim(tmp_path / "two", "sample")
    (tmp_path / "two" / outputs.MARKER).write_text(json.dumps({"command": "sample", "files": shards}))
    (tmp_path / "two" / "shards").mkdir()
    for r in (1, 0):  # rank 0 last: it assembles samples.npz from every rank's shards
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "is_main", lambda r=r: r == 0)
        draw(system, 5, tmp_path / "two", batch=2)
    assert len(fake_generate) == 3
    both = generation.load_samples(tmp_path / "two" / "samples.npz")
    assert np.array_equal(single["arr_0"], both["arr_0"])
    assert np.array_equal(single["labels"], both["labels"])


def test_keep_shards_false_removes_them(tmp_path, fake_generate):
    path = draw(FakeSystem(), 3, tmp_path, batch=2, keep_shards=False)
    assert path.is_file() and not (tmp_path / "shards").exists()


def test_bad_arguments(tmp_path, fake_generate):
    with pytest.raises(D2itError):
        draw(FakeSystem(), 3, tmp_path, batch=0)
    with pytest.raises(generation.ClassError):
        draw(FakeSystem(num_classes=3), 3, tmp_path, classes=[3])
    with pytest.raises(D2itError):
        generation.load_samples(tmp_path / "nope.npz")


# -- the real pipeline on the tiny (untrained) system of conftest.py ---------------------------------------


def _sample(run_cli, system, out, *extra):
    args = ["--num", 5, "--steps", 3, "--batch", 2, "--out", out, "--quiet", *extra]
    return run_cli("sample", "--system", system, *args)


def test_sample_command_files_and_npz(tiny_system, tmp_path, run_cli):
    out = tmp_path / "out"
    result = _sample(run_cli, tiny_system, out, "--class", "1,3", "--npz", "--seed", "7")
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}_class{c}.png" for i, c in enumerate([1, 3, 1, 3, 1])]
    assert (out / "grid.png").is_file() and not (out / "shards").exists()
    data = generation.load_samples(out / "samples.npz")
    arr = data["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 32, 32, 3)
    assert data["labels"].tolist() == [1, 3, 1, 3, 1]
    assert data["grain_maps"].shape == (5, 2, 2) and set(np.unique(data["grain_maps"])) <= {0, 1}
    assert arr.std() > 0  # not a constant image
    assert np.array_equal(load_png(pngs[2]), arr[2])
    settings = json.loads((out / "samples.json").read_text())
    assert settings["seed"] == 7 and settings["steps"] == 3 and settings["num"] == 5


def test_sample_command_is_deterministic_per_seed(tiny_system, tmp_path, run_cli):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert _sample(run_cli, tiny_system, tmp_path / name, "--seed", seed, "--npz").exit_code == 0
        runs[name] = generation.load_samples(tmp_path / name / "samples.npz")
    assert np.array_equal(runs["a"]["arr_0"], runs["b"]["arr_0"])
    assert np.array_equal(runs["a"]["labels"], runs["b"]["labels"])
    assert not np.array_equal(runs["a"]["arr_0"], runs["c"]["arr_0"])


def test_sample_without_npz_and_uniform_classes(tiny_system, tmp_path, run_cli):
    out = tmp_path / "out"
    result = _sample(run_cli, tiny_system, out, "--classes-uniform", "--sampler", "ddim", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["num"] == 5 and not (out / "samples.npz").exists()
    assert sorted(p.name[-10:] for p in (out / "samples").glob("*.png")) == sorted(
        f"_class{c}.png"[-10:] for c in [0, 1, 2, 3, 0]
    )


def test_sample_to_dir_matches_the_pipeline(tiny_system, tmp_path):
    system = systems.load(tiny_system)
    path = draw(system, 3, tmp_path / "out", classes=[2], seed=4, steps=2, batch=3)
    direct = generate(system, [2, 2, 2], seed=4, steps=2, cfg_scale=1.5, progress=False)
    data = generation.load_samples(path)
    assert np.array_equal(data["arr_0"], to_uint8(direct.images))
    assert np.array_equal(data["grain_maps"], direct.grain_maps.numpy())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "4"], "out of range"),
        (["--class", "-1"], "out of range"),
        (["--class", "a"], "integers"),
        (["--class", "1", "--classes-uniform"], "not both"),
        (["--sampler", "nope"], "unknown sampler"),
        (["--sampler", "ddim", "--set", "sampler.eta=2"], "0 <= eta <= 1"),
        (["--sampler", "ddim", "--set", "sampler.spacing=nope"], "unknown spacing"),
        (["--set", "sampler.nope=1"], "no option 'nope'"),
        (["--set", "vae.base_width=1"], "sampler.OPTION=VALUE"),
    ],
)
def test_sample_user_errors_exit_2(tiny_system, tmp_path, run_cli, args, message):
    result = _sample(run_cli, tiny_system, tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "samples").exists()


def test_sample_missing_system_exits_2(tmp_path, run_cli):
    result = _sample(run_cli, tmp_path / "nothing", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_samples_do_not_depend_on_the_batch_size(tiny_system, tmp_path, run_cli):
    """Sample i's pixels come from (seed, i) alone: --batch 1, 4 and 6 give identical arrays."""
    arrays = {}
    for batch in (1, 4, 6):
        out = tmp_path / f"batch{batch}"
        args = ["--num", 6, "--steps", 3, "--batch", batch, "--class", "0,1,2", "--out", out, "--quiet", "--npz"]
        result = run_cli("sample", "--system", tiny_system, *args, "--sampler", "dpmpp-2m-sde", "--seed", 11)
        assert result.exit_code == 0, result.output
        arrays[batch] = generation.load_samples(out / "samples.npz")
    for batch in (4, 6):
        assert np.array_equal(arrays[batch]["arr_0"], arrays[1]["arr_0"])
        assert np.array_equal(arrays[batch]["grain_maps"], arrays[1]["grain_maps"])
    assert len({a.tobytes() for a in arrays[1]["arr_0"]}) == 6  # six different images


def test_sampler_options_and_its_own_default_steps(tiny_system, tmp_path, run_cli, monkeypatch):
    from d2it_sampling import samplers

    seen = []
    original = samplers.Sampler.sample

    def spy(self, model_fn, diffusion, shape, **kwargs):
        seen.append((self.name, self.config, len(self.timesteps(diffusion, kwargs.get("steps")))))
        return original(self, model_fn, diffusion, shape, **kwargs)

    monkeypatch.setattr(samplers.Sampler, "sample", spy)
    out = tmp_path / "out"
    args = ["--num", 2, "--batch", 2, "--out", out, "--quiet", "--sampler", "dpmpp-2m"]
    result = run_cli("sample", "--system", tiny_system, *args, "--set", "sampler.steps=4",
                     "--set", "sampler.spacing=karras")  # fmt: skip
    assert result.exit_code == 0, result.output
    name, config, steps = seen[-1]
    assert name == "dpmpp-2m" and steps == 4 and config.spacing == "karras"
    settings = json.loads((out / "samples.json").read_text())
    assert settings["steps"] is None and settings["sampler"] == "dpmpp-2m"
    assert settings["sampler_options"] == {"spacing": "karras", "steps": 4}
