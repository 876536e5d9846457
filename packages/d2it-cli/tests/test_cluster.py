"""Cluster launches: two torchrun "nodes" on localhost (c10d rendezvous, gloo), and resuming on another world size."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import ToyTask, config

from d2it.io import load_safetensors
from d2it_cli.engine import Trainer, read_log
from d2it_cli.engine import checkpoint as ckpt

SCRIPT = Path(__file__).with_name("torchrun_toy.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(out, run, steps):
    """Two torchrun launchers, one process each, meeting at a c10d rendezvous on a free local port."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "d2it-test",
        "--max_restarts", "0", str(SCRIPT), str(out), str(run), str(steps),
    ]  # fmt: skip
    launchers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = []
    for p in launchers:
        try:
            outputs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in launchers:
                q.kill()
            pytest.fail("the two-node launch did not finish in 300 s")
    for p, text in zip(launchers, outputs):
        assert p.returncode == 0, text[-3000:]


def test_two_torchrun_nodes_train_together_with_identical_weights(tmp_path):
    launch_two_nodes(tmp_path, tmp_path / "run", 2)
    r0 = torch.load(tmp_path / "rank0-of-2.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1-of-2.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["wrapped"] == "DistributedDataParallel" and r0["find_unused"] is False
    assert len(r0["seen"]) == len(r1["seen"]) == 16 and not set(r0["seen"][:8]) & set(r1["seen"][:8])
    init = ToyTask().model.state_dict()
    for k, v in r0["model"].items():
        assert torch.equal(v, r1["model"][k]), k
    assert any(not torch.equal(v, init[k]) for k, v in r0["model"].items())
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]


def test_resume_on_another_world_size_keeps_the_global_batch_and_the_samples(tmp_path):
    launch_two_nodes(tmp_path, tmp_path / "run", 2)  # global batch 4 x 2 accumulation x 2 ranks = 16
    full = ToyTask()
    Trainer(full, config(tmp_path / "single", steps=4, grad_accum=4, ckpt_every=2)).fit()
    resumed = ToyTask()
    trainer = Trainer(resumed, config(tmp_path / "run", steps=4, ckpt_every=2, resume="latest"))
    trainer.fit()
    assert (trainer.config.batch, trainer.config.grad_accum, trainer.global_batch) == (4, 4, 16)
    assert resumed.seen == full.seen[32:]  # steps 3 and 4 see exactly the samples of the one-process run
    a, b = read_log(tmp_path / "single"), read_log(tmp_path / "run")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:]):  # up to reduction order and per-rank noise draws
        assert rb["loss"] == pytest.approx(ra["loss"], rel=0.05)


CLI_SCRIPT = Path(__file__).with_name("torchrun_cli.py")
STAGE2 = ["--batch", "4", "--log-every", "1", "--quiet", "--ckpt-every", "2", "--workers", "0", "--no-ema"]
# the GAN stays off: the PatchGAN's BatchNorm and adaptive weight see each rank's micro-batch only
DVAE = [*STAGE2, "--data", "synthetic:16", "--lpips-random", "--lr", "1e-4", "--disc-start", "100"]


def torchrun_cli(*commands, processes=2):
    """`d2it` command lines run one after another in each of `processes` torchrun ranks (gloo, localhost)."""
    args = [str(a) for c in commands for a in (*c, "--next")][:-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "--max_restarts", "0", str(CLI_SCRIPT), *args,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def checkpoint_weights(run_dir, part, step):
    return load_safetensors(Path(run_dir) / "checkpoints" / ckpt.step_name(step) / f"{part}.safetensors")[0]


def test_resume_on_two_ranks_is_the_same_training_run(tiny_system, tmp_path, run_cli):
    """World 1 (batch 4) for 3 steps == world 1 for 2 steps, then 2 gloo ranks (batch 2 each): content, grain, DVAE."""
    run_cli("thresholds", "--data", "synthetic:12", "--system", tiny_system, "--out", tmp_path / "t.json")
    cache = tmp_path / "cache"
    encoded = run_cli("encode", "--system", tiny_system, "--data", "synthetic:12", "--out", cache, "--quiet")
    assert encoded.exit_code == 0, encoded.output
    systems = {}
    for name in ("full", "cut", "full-dvae", "cut-dvae"):  # training writes weights back: one copy per run
        systems[name] = tmp_path / f"system-{name}"
        shutil.copytree(tiny_system, systems[name])
    tasks = {"content": ["--cache", cache, *STAGE2], "grain": ["--cache", cache, *STAGE2], "dvae": DVAE}

    def command(task, kind, steps, *extra):
        system = systems[f"{kind}-dvae" if task == "dvae" else kind]
        run = tmp_path / f"{kind}-{task}"
        return ["train", task, "--system", system, "--run-dir", run, "--steps", steps, *tasks[task], *extra]

    for task in tasks:
        for kind, steps in (("full", 3), ("cut", 2)):
            result = run_cli(*command(task, kind, steps))
            assert result.exit_code == 0, result.output
    torchrun_cli(*(command(task, "cut", 3, "--resume", "latest") for task in tasks))
    for task, part in (("content", "content"), ("grain", "grain"), ("dvae", "vae")):
        full = checkpoint_weights(tmp_path / f"full-{task}", part, 3)
        cut = checkpoint_weights(tmp_path / f"cut-{task}", part, 3)
        start = checkpoint_weights(tmp_path / f"cut-{task}", part, 2)
        assert max((cut[k] - start[k]).abs().max() for k in cut) > 5e-5, task  # the resumed step trained
        for k in full:  # the same run up to floating-point reduction order
            if k.endswith(".k.bias"):  # its gradient is 0 up to rounding (softmax ignores it), which Adam scales to lr
                continue
            torch.testing.assert_close(cut[k], full[k], atol=1e-5, rtol=1e-4, msg=f"{task} {k}")
        config = json.loads((tmp_path / f"cut-{task}" / "train.json").read_text())
        assert (config["world_size"], config["batch"], config["grad_accum"]) == (2, 2, 1)
        a, b = read_log(tmp_path / f"full-{task}"), read_log(tmp_path / f"cut-{task}")
        assert [r["step"] for r in b] == [1, 2, 3]
        for ra, rb in zip(a, b):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5), task  # per-rank draws: off by percents
