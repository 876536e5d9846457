"""The training engine: exact resume, interrupted checkpoint writes, and 2-process DDP on CPU (gloo)."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from d2it.errors import CheckpointError, ConfigError, DataError
from d2it_cli.engine import Task, TrainConfig, Trainer, latest_checkpoint, load_checkpoint, read_log
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.feed import GlobalOrder
from d2it_cli.engine.split import BatchSplit


class Noisy(torch.utils.data.Dataset):
    """Vectors with a random augmentation drawn from torch's global generator."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(4), i


class ToyTask(Task):
    """A regression model (DDP-wrapped) and an auxiliary critic (gradients averaged by hand)."""

    name = "toy"

    def __init__(self, n=24, lr=1e-2, keyed=False):
        torch.manual_seed(0)
        self.lr, self.keyed = lr, keyed  # keyed: the noise drawn per sample (the same on any number of ranks)
        self.dataset = Noisy(n)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.critic = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        self.seen = []

    def modules(self):
        return {"model": self.model, "critic": self.critic}

    def make_optimizers(self, trainer):
        return {
            "model": torch.optim.Adam(self.model.parameters(), lr=self.lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=self.lr),
        }

    def micro_step(self, trainer, batch, step, scale):
        x, idx = batch
        self.seen.extend(idx.tolist())
        # randomness inside the step: must be restored on resume
        noise = trainer.draws.randn("noise", x.shape[0], 1) if self.keyed else torch.randn(x.shape[0], 1)
        with trainer.autocast():
            pred = trainer.wrapped["model"](x)
        loss = ((pred - x.sum(1, keepdim=True) - 0.01 * noise) ** 2).mean()
        (loss * scale).backward()
        with trainer.autocast():
            critic_loss = trainer.wrapped["critic"](pred.detach()).float().pow(2).mean()
        (critic_loss * scale).backward()
        return {"loss": loss.detach(), "critic": critic_loss.detach()}


def config(run_dir, **kw):
    base = dict(
        batch=4,
        grad_accum=2,
        steps=6,
        ckpt_every=3,
        log_every=1,
        warmup="2",
        ema=True,
        ema_decay=0.9,
        quiet=True,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(run_dir=run_dir, **base)


def losses(run_dir):
    return {r["step"]: (r["loss"], r["critic"], r["lr"]) for r in read_log(run_dir)}


def test_resume_repeats_uninterrupted_losses_exactly(tmp_path):
    full = Trainer(ToyTask(), config(tmp_path / "full", workers=2))
    full.fit()
    Trainer(ToyTask(), config(tmp_path / "cut", steps=3, workers=2)).fit()
    assert sorted(losses(tmp_path / "cut")) == [1, 2, 3]
    resumed_task = ToyTask()
    Trainer(resumed_task, config(tmp_path / "cut", resume="latest", workers=2)).fit()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert a[step] == b[step], step
    for k, v in full.task.model.state_dict().items():
        assert torch.equal(v, resumed_task.model.state_dict()[k]), k
    # EMA, optimizer and data position are in the final checkpoint
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    assert state["step"] == 6 and "model" in state["ema"] and set(state["optimizers"]) == {"model", "critic"}
    # warm-up: linear over 2 steps, then constant
    assert a[1][2] == pytest.approx(5e-3) and a[2][2] == pytest.approx(1e-2) and a[6][2] == pytest.approx(1e-2)


def test_a_different_seed_changes_the_losses(tmp_path):
    Trainer(ToyTask(), config(tmp_path / "a", steps=2)).fit()
    Trainer(ToyTask(), config(tmp_path / "b", steps=2, seed=4)).fit()
    assert losses(tmp_path / "a")[2] != losses(tmp_path / "b")[2]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = ckpt.io.save_state

    def failing(obj, path):
        if "step-0000004" in str(path) and Path(path).name == ckpt.STATE:
            raise OSError("disk full (simulated)")
        return real(obj, path)

    monkeypatch.setattr(ckpt.io, "save_state", failing)
    with pytest.raises(OSError, match="simulated"):
        Trainer(ToyTask(), config(run, ckpt_every=2)).fit()
    monkeypatch.setattr(ckpt.io, "save_state", real)
    root = run / "checkpoints"
    assert (root / ".step-0000004.tmp").is_dir()  # the half-written directory is left behind
    assert (root / "latest").read_text().strip() == "step-0000002"
    assert latest_checkpoint(run).name == "step-0000002"
    weights, state, rng = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 2 and "model" in weights and "torch" in rng
    # resuming continues from step 2 and cleans the temporary directory up
    Trainer(ToyTask(), config(run, ckpt_every=2, resume="latest")).fit()
    assert not (root / ".step-0000004.tmp").exists()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4, 6]
    # lines the interrupted run logged after its last checkpoint (steps 3, 4) are replaced, not duplicated
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4, 5, 6]


def test_stale_latest_pointer_falls_back_to_newest_complete(tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(), config(run, steps=4, ckpt_every=2, keep=1)).fit()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4]  # --keep 1 prunes step 2
    (run / "checkpoints" / "latest").write_text("step-0000099\n")
    assert latest_checkpoint(run).name == "step-0000004"
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nowhere"), run)
    with pytest.raises(CheckpointError, match="--seed"):
        Trainer(ToyTask(), config(run, steps=6, seed=4, resume="latest")).fit()


def test_resume_with_another_micro_batch_keeps_the_global_batch_and_the_samples(tmp_path, capsys):
    full_task = ToyTask()
    Trainer(full_task, config(tmp_path / "full", steps=4, ckpt_every=2)).fit()
    Trainer(ToyTask(), config(tmp_path / "cut", steps=2, ckpt_every=2)).fit()
    task = ToyTask()
    asked = config(tmp_path / "cut", steps=4, batch=3, resume="latest", quiet=False)
    trainer = Trainer(task, asked)
    trainer.fit()
    assert (trainer.config.batch, trainer.config.grad_accum, trainer.global_batch) == (2, 4, 8)
    assert (asked.batch, asked.grad_accum, asked.global_batch) == (3, 2, None)  # the caller's config is left alone
    assert "--batch 2 --grad-accum 4" in capsys.readouterr().out
    assert task.seen == full_task.seen[16:]  # the same samples in the same order
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    for step in (3, 4):  # the regression loss; the critic's batch norm sees other micro-batches
        assert a[step][0] == pytest.approx(b[step][0], rel=1e-5), step


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--steps or --epochs"):
        Trainer(ToyTask(), config(tmp_path, steps=None))
    with pytest.raises(ConfigError, match="--warmup"):
        Trainer(ToyTask(), config(tmp_path, warmup="soon"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        Trainer(ToyTask(n=3), config(tmp_path)).fit()


def test_global_order_is_split_by_rank_and_independent_of_the_world_size():
    # global batch 8: one rank with micro-batch 4 (x2 accumulation), two ranks with micro-batch 4, or 3 ranks (3+3+2)
    one = GlobalOrder(20, BatchSplit.even(4, 2, 1), seed=1, rank=0)
    a, b = (GlobalOrder(20, BatchSplit.even(4, 1, 2), seed=1, rank=r) for r in (0, 1))
    assert one.epoch_size == 16  # whole global batches only
    single = [i for _, batch in zip(range(4), one.plan(0)) for i, _ in batch]
    split = [i for _, pa, pb in zip(range(2), a.plan(0), b.plan(0)) for i, _ in pa + pb]
    assert single == split and len(set(single)) == 16
    uneven = BatchSplit.of(8, 3, 8)
    thirds = [GlobalOrder(20, uneven, seed=1, rank=r) for r in range(3)]
    assert [len(next(o.plan(0))) for o in thirds] == [3, 3, 2]
    assert [i for _, *parts in zip(range(2), *(o.plan(0) for o in thirds)) for p in parts for i, _ in p] == single
    assert one.items(16, 4) != one.items(0, 4)  # a new epoch, a new order
    assert one.items(0, 4) == next(one.plan(0)) and one.items(4, 4) == next(one.plan(4))
    assert one.step_start(12) == 16  # a global batch that no longer fits the epoch (a changed one) starts the next


def test_batch_split_keeps_the_global_batch_evenly_or_weighted_by_samples():
    assert BatchSplit.of(32, 2, 8) == BatchSplit.even(8, 2, 2)
    assert BatchSplit.of(32, 4, 8) == BatchSplit.even(8, 1, 4)
    assert BatchSplit.of(24, 1, 16) == BatchSplit.even(12, 2, 1)
    uneven = BatchSplit.of(32, 3, 8)  # 11 + 11 + 10 samples, 2 micro-batches each
    assert uneven.sizes == ((6, 6, 5), (5, 5, 5)) and uneven.global_batch == 32 and not uneven.is_even
    assert [uneven.offset(m, r) for m in range(2) for r in range(3)] == [0, 6, 12, 17, 22, 27]
    # a micro-batch's mean loss x its weight, averaged over the 3 ranks by DDP: every sample counts 1/32
    shares = [uneven.weight(m, r) / (3 * uneven.sizes[m][r]) for m in (0, 1) for r in (0, 1, 2)]
    assert shares == pytest.approx([1 / 32] * 6)
    assert "11 + 11 + 10 samples" in uneven.describe()
    with pytest.raises(ConfigError, match="cannot give each of 3 processes a sample"):
        BatchSplit.of(2, 3, 8)
    with pytest.raises(ConfigError, match="pass a larger --batch"):
        BatchSplit.of(4, 3, 1)


# -- 2-process DDP on CPU ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, run_dir, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from d2it import dist

    task = ToyTask()
    trainer = Trainer(task, config(run_dir, steps=3, ckpt_every=2, device="cpu"))
    trainer.fit()
    wrapped = type(trainer.wrapped["model"]).__name__
    torch.save(
        {
            "model": task.model.state_dict(),
            "critic": task.critic.state_dict(),
            "seen": task.seen,
            "wrapped": wrapped,
            "world": dist.world_size(),
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.shutdown()


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=world, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["wrapped"] == "DistributedDataParallel"
    assert not set(r0["seen"][:8]) & set(r1["seen"][:8])  # different data on each rank in the first epoch
    init = ToyTask().model.state_dict()
    for part in ("model", "critic"):
        for k, v in r0[part].items():
            assert torch.equal(v, r1[part][k]), (part, k)
    assert any(not torch.equal(v, init[k]) for k, v in r0["model"].items())
    # one set of weights and state, one RNG file per rank
    step3 = tmp_path / "run" / "checkpoints" / "step-0000003"
    assert sorted(p.name for p in step3.iterdir()) == [
        "critic.safetensors",
        "model.safetensors",
        "rng-00000.pt",
        "rng-00001.pt",
        "state.pt",
    ]
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["images_per_s"] > 0 for r in log)


def test_epochs_and_bf16_autocast_on_cpu(tmp_path):
    trainer = Trainer(ToyTask(), config(tmp_path, steps=None, epochs=2, precision="bf16", ema=False, warmup="1ep"))
    trainer.fit()
    # 24 items, batch 4 -> 6 micro-batches per epoch, 2 per step -> 3 steps per epoch
    assert trainer.total_steps == 6 and trainer.schedule.warmup_steps == 3 and trainer.precision == "bf16"
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in log] == pytest.approx(
        [1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2]
    )  # epochs consumed
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert Trainer(ToyTask(), config(tmp_path / "x")).precision == "fp32"  # auto on CPU


def test_a_new_learning_rate_applies_on_resume(tmp_path):
    Trainer(ToyTask(), config(tmp_path, steps=2, warmup="0")).fit()
    Trainer(ToyTask(lr=1e-3), config(tmp_path, steps=3, warmup="0", resume="latest")).fit()
    assert [r["lr"] for r in read_log(tmp_path)] == [1e-2, 1e-2, 1e-3]


def test_a_short_run_is_warned_that_its_ema_is_still_the_start():
    from d2it_cli.engine.ema import stale_ema

    # DiT's 0.9999 over 300 steps keeps 0.9999**300 = 97% of the initial weights: what a short run would write
    warning = stale_ema(0.9999, 300)
    assert "97% of the starting weights after 300 steps" in warning and "--ema-decay (e.g. 0.983)" in warning
    assert stale_ema(0.99, 300) is None and stale_ema(0.9999, 400_000) is None


def test_fp16_trains_with_a_loss_scaler_that_the_checkpoint_keeps(tmp_path):
    full = Trainer(ToyTask(), config(tmp_path / "full", steps=4, precision="fp16"))
    full.fit()
    Trainer(ToyTask(), config(tmp_path / "cut", steps=2, ckpt_every=2, precision="fp16")).fit()
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    assert state["scaler"]["scale"] > 0 and full.scaler.is_enabled()
    Trainer(ToyTask(), config(tmp_path / "cut", steps=4, precision="fp16", resume="latest")).fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
