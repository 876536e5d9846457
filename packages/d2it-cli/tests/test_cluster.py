"""Cluster launches: two torchrun "nodes" on localhost (c10d rendezvous, gloo), and resuming on another world size."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import ToyTask, config

from d2it_cli.engine import Trainer, read_log

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
