"""Stage 2 on the CLI: `d2it train grain|content` on a latent cache, resume, and refusal of foreign caches."""

import json
import shutil
from contextlib import nullcontext

import pytest
import torch

from d2it import system as systems
from d2it.io import file_sha256, load_safetensors, save_safetensors
from d2it.layout import project_to_layout
from d2it_cli.engine import read_log
from d2it_cli.engine.draws import SampleDraws

FAST = ["--batch", "4", "--log-every", "1", "--quiet", "--ckpt-every", "2"]


@pytest.fixture
def encoded(tiny_system, tmp_path, run_cli):
    """(system directory, cache directory) with thresholds and a 12-image cache."""
    run_cli("thresholds", "--data", "synthetic:12", "--system", tiny_system, "--out", tmp_path / "t.json")
    cache = tmp_path / "cache"
    result = run_cli("encode", "--system", tiny_system, "--data", "synthetic:12", "--out", cache, "--quiet")
    assert result.exit_code == 0, result.output
    return tiny_system, cache


def test_train_content_resume_repeats_the_losses(encoded, tmp_path, run_cli):
    system, cache = encoded
    before = file_sha256(system / "content.safetensors")
    # every run writes its weights back, so the two runs start from copies of the same directory
    copy = tmp_path / "system-copy"
    shutil.copytree(system, copy)
    common = ["train", "content", "--cache", cache, *FAST, "--save-to-system"]
    full = run_cli(
        *common,
        "--system",
        copy,
        "--steps",
        "3",
        "--run-dir",
        tmp_path / "full",
        "--sample-every",
        "3",
        "--sample-steps",
        "2",
    )
    assert full.exit_code == 0, full.output
    assert (tmp_path / "full" / "samples" / "step-0000003.png").is_file()
    first = run_cli(*common, "--system", system, "--steps", "2", "--run-dir", tmp_path / "cut")
    assert first.exit_code == 0, first.output
    second = run_cli(*common, "--system", system, "--steps", "3", "--run-dir", tmp_path / "cut", "--resume", "latest")
    assert second.exit_code == 0, second.output
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "mse", "vb", "mse_grain_0", "mse_grain_1"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    final_a, _ = load_safetensors(copy / "content.safetensors")
    final_b, _ = load_safetensors(system / "content.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert a[0]["loss"] > 0 and 0.0 <= a[0]["fine_ratio"] <= 1.0
    # the EMA weights (decay 0.9999 by default) are what is written back
    assert file_sha256(system / "content.safetensors") != before
    cfg = json.loads((tmp_path / "cut" / "train.json").read_text())
    assert cfg["ema"] is True and cfg["ema_decay"] == 0.9999 and cfg["lr"]["content"] == 1e-4
    systems.load(system)


def test_train_content_with_random_grain_maps(encoded, tmp_path, run_cli):
    system, cache = encoded
    result = run_cli(
        "train",
        "content",
        "--system",
        system,
        "--cache",
        cache,
        *FAST,
        "--steps",
        "2",
        "--grain-source",
        "random",
        "--no-ema",
        "--weight-decay",
        "0.01",
        "--run-dir",
        tmp_path / "r",
    )
    assert result.exit_code == 0, result.output
    log = read_log(tmp_path / "r")
    assert len(log) == 2 and all(0.0 <= r["fine_ratio"] <= 1.0 for r in log)


def test_train_grain_and_resume(encoded, tmp_path, run_cli):
    system, cache = encoded
    before = file_sha256(system / "grain.safetensors")
    common = [
        "train",
        "grain",
        "--system",
        system,
        "--cache",
        cache,
        *FAST,
        "--run-dir",
        tmp_path / "g",
        "--lr",
        "3e-4",
        "--save-to-system",
    ]
    result = run_cli(*common, "--steps", "2", "--sample-every", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "samples" / "step-0000002.png").is_file()
    result = run_cli(*common, "--steps", "4", "--resume", "latest")
    assert result.exit_code == 0, result.output
    log = read_log(tmp_path / "g")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    assert file_sha256(system / "grain.safetensors") != before
    assert all(r["lr"] == 3e-4 for r in log)


def test_a_cache_from_other_dvae_weights_is_refused(encoded, run_cli):
    system, cache = encoded
    tensors, meta = load_safetensors(system / "vae.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_safetensors(tensors, system / "vae.safetensors", meta)
    for part in ("content", "grain"):
        result = run_cli("train", part, "--system", system, "--cache", cache, "--steps", "1", "--quiet")
        assert result.exit_code == 2
        assert "was encoded with other DVAE weights" in result.output and "run d2it encode again" in result.output


def test_labels_beyond_the_system_classes_are_refused(encoded, tmp_path, run_cli):
    system, cache = encoded
    record, _ = systems.read_record(system)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["num_classes"] = record.num_classes + 1
    (cache / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("train", "content", "--system", system, "--cache", cache, "--steps", "1", "--quiet")
    assert result.exit_code == 2 and "classes but the system was built for 4" in result.output


def test_cache_items_collate_into_batches(encoded):
    from d2it_cli.cache import LatentCache

    _, cache = encoded
    loader = torch.utils.data.DataLoader(LatentCache(cache), batch_size=5)
    batch = next(iter(loader))
    assert [p.shape for p in batch["params"]] == [(5, 8, 2, 2), (5, 8, 4, 4)]
    assert batch["grain_map"].shape == (5, 2, 2) and batch["grain_map"].dtype == torch.int64
    assert batch["label"].tolist() == [0, 1, 2, 3, 0]


def test_fast_paths_train_the_same(encoded, tmp_path, run_cli):
    system, cache = encoded
    copy = tmp_path / "system-copy"
    shutil.copytree(system, copy)
    common = ["train", "content", "--cache", cache, *FAST, "--steps", "2", "--no-ema"]
    plain = run_cli(*common, "--system", system, "--run-dir", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    fast = run_cli(*common, "--system", copy, "--run-dir", tmp_path / "fast", "--grad-checkpointing", "--channels-last")
    assert fast.exit_code == 0, fast.output
    a, b = read_log(tmp_path / "plain"), read_log(tmp_path / "fast")
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    config = json.loads((tmp_path / "fast" / "train.json").read_text())
    assert config["grad_checkpointing"] and config["channels_last"] and not config["compile"]


class _Split:
    """What `ContentTask.micro_step` / `GrainTask.micro_step` need of a trainer, for one micro-batch."""

    def __init__(self, draws, name, model):
        self.draws, self.wrapped = draws, {name: model}

    def autocast(self):
        return nullcontext()


def _split_runs(task, name, model, batch, record):
    """Micro-steps over a batch of 4 as one rank, and as two ranks of 2: what `record` captured in each case."""
    out = []
    for world in (1, 2):
        captured = []
        per = 4 // world
        for rank in range(world):
            draws = SampleDraws(seed=7, global_batch=4, device="cpu")
            draws.focus(5, rank * per)
            rows = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items() if k != "params"}
            rows["params"] = [p[rank * per : (rank + 1) * per] for p in batch["params"]]
            record.clear()
            task.micro_step(_Split(draws, name, model), rows, 5, 1.0)
            captured.append(dict(record))
        out.append({k: torch.cat([c[k] for c in captured]) for k in captured[0]})
    return out


def test_content_draws_are_keyed_by_sample_not_by_rank(encoded, monkeypatch):
    from d2it_cli.engine.stage2 import ContentTask

    system, cache = encoded
    task = ContentTask(system, cache, grain_source="random")
    task.build(None)
    batch = next(iter(torch.utils.data.DataLoader(task.dataset, batch_size=4)))
    record = {}
    losses = task.diffusion.training_losses

    def spy(model, x0, t, y, grain_map=None, noise=None, grain_counts=None):
        record.update(x0=x0, t=t, noise=noise, grain_map=grain_map, drop=model.keywords["force_drop_ids"])
        return losses(model, x0, t, y, grain_map=grain_map, noise=noise, grain_counts=grain_counts)

    monkeypatch.setattr(task.diffusion, "training_losses", spy)
    one, two = _split_runs(task, "content", task.system.content.train(), batch, record)
    for key in ("x0", "t", "noise", "grain_map", "drop"):  # per-rank draws from the global RNG differ here
        assert torch.equal(one[key], two[key]), key
    assert one["t"].unique().numel() > 1
    # the noise keeps the grain layout: one value per code, copied to its cells
    torch.testing.assert_close(project_to_layout(one["noise"], one["grain_map"], 2), one["noise"])


def test_grain_draws_are_keyed_by_sample_not_by_rank(encoded, monkeypatch):
    from d2it_cli.engine.stage2 import GrainLoss, GrainTask

    system, cache = encoded
    task = GrainTask(system, cache)
    task.build(None)
    batch = next(iter(torch.utils.data.DataLoader(task.dataset, batch_size=4)))
    record = {}
    loss = task.system.grain.loss

    def spy(grain_maps, classes, mask_draws=None, force_drop_ids=None, token_count=None):
        record.update(ratio=mask_draws[0], order=mask_draws[1], drop=force_drop_ids, count=token_count[None])
        return loss(grain_maps, classes, mask_draws=mask_draws, force_drop_ids=force_drop_ids, token_count=token_count)

    monkeypatch.setattr(task.system.grain, "loss", spy)
    one, two = _split_runs(task, "grain", GrainLoss(task.system.grain).train(), batch, record)
    for key in ("ratio", "order", "drop"):
        assert torch.equal(one[key], two[key]), key
    # each rank divides by its share of the global batch's masked tokens
    assert two["count"].tolist() == [one["count"].item() / 2] * 2
