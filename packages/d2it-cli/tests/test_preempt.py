"""Runs that survive a cluster: real signals checkpoint the step and stop (one process and 2 gloo ranks), the
resume repeats an uninterrupted run, a resume on 3 ranks shares an uneven global batch, and the global batch
changes on purpose."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine import ToyTask, config

from d2it.errors import ConfigError
from d2it_cli.commands import failures
from d2it_cli.engine import Trainer, latest_checkpoint, load_checkpoint, read_log
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.config import signal_numbers
from d2it_cli.engine.preempt import EXIT_PREEMPTED, REPEAT_WINDOW, Preempted

SCRIPT = Path(__file__).with_name("torchrun_toy.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOY_CKPT_EVERY": "1000"}


def toy(out, run, steps, *resume, ranks=0, sleep=0.0, **env):
    """The toy trainer as a process: alone (ranks=0) or under torchrun with `ranks` gloo ranks."""
    out.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable]
    if ranks:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(ranks),
            "--max_restarts",
            "0",
        ]
    command = [*launcher, str(SCRIPT), str(out), str(run), str(steps), *resume]
    settings = {**ENV, "TOY_SLEEP": str(sleep), **env}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.Popen(command, env=settings, start_new_session=True, **pipes)  # its own process group


def finish(process, timeout=300) -> tuple[int, str]:
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the toy run did not finish in time")
    return process.returncode, output


def run(*args, **kwargs) -> str:
    code, output = finish(toy(*args, **kwargs))
    assert code == 0, output[-3000:]
    return output


def signal_after(process, run_dir, steps: int, sig=signal.SIGTERM, times=1, gap=0.3, group=False):
    """Send `sig` once the run has logged `steps` steps (`times` times, `gap` seconds apart; `group`: to the
    process and its data-loader workers, as a cluster's scheduler signals every process of a job)."""
    deadline = time.monotonic() + 240
    while len(read_log_lines(run_dir)) < steps:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run logged too little in time"
        time.sleep(0.05)
    for _ in range(times):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        time.sleep(gap)


def read_log_lines(run_dir):
    path = Path(run_dir) / "log.jsonl"
    return [line for line in path.read_text().splitlines() if line.endswith("}")] if path.is_file() else []


def losses(run_dir):
    return {r["step"]: (r["loss"], r["lr"]) for r in read_log(run_dir)}


def test_sigterm_checkpoints_the_step_and_the_resumed_run_repeats_an_uninterrupted_one(tmp_path):
    cut = tmp_path / "cut"
    process = toy(tmp_path / "a", cut, 40, sleep=0.05, TOY_WORKERS="2")
    signal_after(process, cut, 3, times=2, group=True)  # the trainer and its 2 data workers, twice at once
    code, output = finish(process)
    assert code == EXIT_PREEMPTED, output[-3000:]
    stopped = max(losses(cut))  # the step it was in when the signal came, finished and logged
    assert f"stopped: SIGTERM at step {stopped} of 40" in output and stopped < 40
    assert latest_checkpoint(cut).name == ckpt.step_name(stopped)  # not a periodic one: --ckpt-every is 1000
    assert [s for s, _ in ckpt.list_checkpoints(cut)] == [stopped]
    run(tmp_path / "b", cut, 40, "latest")
    run(tmp_path / "c", tmp_path / "full", 40)
    assert losses(cut) == losses(tmp_path / "full")  # every step, exactly
    resumed, full = (torch.load(tmp_path / d / "rank0-of-1.pt", weights_only=True) for d in ("b", "c"))
    assert all(torch.equal(v, full["model"][k]) for k, v in resumed["model"].items())


def test_a_second_signal_exits_at_once(tmp_path):
    process = toy(tmp_path / "a", tmp_path / "run", 40, sleep=1.5)  # 3 s a step
    signal_after(process, tmp_path / "run", 1, sig=signal.SIGUSR1, times=2, gap=REPEAT_WINDOW + 0.5)
    code, _ = finish(process)
    assert code == -signal.SIGUSR1  # killed by the signal itself, before the step ended
    assert ckpt.list_checkpoints(tmp_path / "run") == []


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_a_resume_on_3_ranks_shares_the_batch(tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    torchrun = toy(tmp_path / "a", cut, 30, ranks=2, sleep=0.1)
    signal_after(torchrun, cut, 3)  # torchrun forwards SIGTERM to both ranks
    _, output = finish(torchrun)
    stopped = max(losses(cut))
    assert output.count(f"stopped: SIGTERM at step {stopped} of 30") == 2, output[-3000:]  # both ranks, one step
    assert latest_checkpoint(cut).name == ckpt.step_name(stopped)
    assert sorted(p.name for p in latest_checkpoint(cut).glob("rng-*")) == ["rng-00000.pt", "rng-00001.pt"]
    elastic = tmp_path / "elastic"
    shutil.copytree(cut, elastic)
    run(tmp_path / "b", cut, 30, "latest", ranks=2)
    run(tmp_path / "c", full, 30, ranks=2)
    assert losses(cut) == losses(full)  # the resumed 2-rank run is the uninterrupted one, exactly
    # the same checkpoint on 3 ranks: global batch 16 as 6 + 5 + 5 samples, each micro-batch weighted by its samples
    output = run(tmp_path / "d", elastic, 30, "latest", ranks=3)
    assert "16 on 3 process(es): 6 + 5 + 5 samples per step" in output
    train = json.loads((elastic / "train.json").read_text())
    assert (train["world_size"], train["global_batch"]) == (3, 16)
    a, b = losses(full), losses(elastic)
    assert sorted(b) == list(range(1, 31))
    for step in range(stopped + 1, 31):  # the same run up to floating-point reduction order
        assert b[step][0] == pytest.approx(a[step][0], rel=1e-5), step


def test_a_changed_global_batch_is_said_and_its_learning_rate_rule_applied(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(ToyTask(), config(run, steps=2, ckpt_every=2)).fit()  # global batch 4 x 2 = 8
    task = ToyTask()
    trainer = Trainer(task, config(run, steps=4, resume="latest", global_batch=16, lr_scale="linear"))
    assert "global batch 8 -> 16 (--global-batch): learning rate x 2 (--lr-scale linear)" in capsys.readouterr().out
    trainer.fit()
    assert (trainer.config.batch, trainer.config.grad_accum, trainer.global_batch) == (4, 4, 16)
    assert len(task.seen) == 2 * 16
    _, state, _ = load_checkpoint(latest_checkpoint(run))
    assert state["global_batch"] == 16 and state["data"]["samples"] == 2 * 8 + 2 * 16
    Trainer(ToyTask(), config(run, steps=5, resume="latest")).fit()  # later resumes keep both
    assert [r["lr"] for r in read_log(run)] == pytest.approx([5e-3, 1e-2, 2e-2, 2e-2, 2e-2])
    assert json.loads((run / "train.json").read_text())["global_batch"] == 16


def test_the_stop_is_one_line_with_its_own_exit_code_and_signal_names_are_checked(capsys):
    stop = Preempted("SIGTERM at step 5 of 9: wrote checkpoint X; continue with --resume latest", 5, "X")
    assert failures.report(stop) == EXIT_PREEMPTED == 75
    assert (
        capsys.readouterr().err
        == "stopped: SIGTERM at step 5 of 9: wrote checkpoint X; continue with --resume latest\n"
    )
    assert signal_numbers(["term", "SIGUSR1"]) == (signal.SIGTERM, signal.SIGUSR1) and signal_numbers(["none"]) == ()
    with pytest.raises(ConfigError, match="--preempt-signal must name"):
        signal_numbers(["KILL"])


def test_an_error_under_torchrun_is_printed_once_and_the_ranks_exit_2(tiny_system, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max_restarts", "0",
        "-m", "d2it_cli", "train", "dvae", "--system", str(tiny_system), "--data", "synthetic:8", "--steps", "1",
        "--global-batch", "1", "--run-dir", str(tmp_path / "run"), "--lpips-random",
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: a global batch of 1 cannot give each of 2 processes a sample"], done.stdout[-3000:]
    assert "exitcode  : 2" in done.stdout  # torchrun's summary of the ranks' exit codes
    frames = [line for line in done.stdout.splitlines() if line.strip().startswith("File ") and "d2it" in line]
    assert frames == []  # no traceback from d2it (torchrun prints its own)


class _WorkerPid(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return os.getpid()


LEAKED_LOADER = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_preempt import _WorkerPid
from d2it_cli.engine.feed import IgnoreSignals, _batches
loader = torch.utils.data.DataLoader(_WorkerPid(), batch_size=2, num_workers=2,
                                     worker_init_fn=IgnoreSignals([signal.SIGTERM, signal.SIGUSR1]))
KEPT = _batches(loader)  # alive until the interpreter exits, as a loader held by a traceback is
print(sorted({{int(p) for _ in range(4) for p in next(KEPT)}}), flush=True)
sys.stdin.readline()
"""


def test_loader_workers_ignore_a_job_wide_signal_and_still_end_with_the_interpreter():
    # workers that ignore SIGTERM would hang multiprocessing's exit (SIGTERM to each worker, then wait) unless the
    # feed kills them first
    code = LEAKED_LOADER.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 2
        subprocess.run(["kill", "-TERM", *map(str, pids)], check=True)  # from another process, as a cluster does
        subprocess.run(["kill", "-USR1", *map(str, pids)], check=True)
        time.sleep(1.0)
        assert proc.poll() is None  # the loader's parent did not lose its workers (torch would raise)
        for pid in pids:
            os.kill(pid, 0)  # still alive
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
