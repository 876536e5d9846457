"""Never overwrite good with bad: finite-loss guard, full disks, one writer per folder, our outputs only."""

import errno
import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_engine import ToyTask, config

from d2it import io
from d2it.errors import CheckpointError, D2itError
from d2it_cli import outputs
from d2it_cli.engine import Trainer, latest_checkpoint, load_checkpoint, read_log
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.loop import TrainingDiverged
from d2it_cli.locks import FolderBusyError, FolderLock


class NanAt(ToyTask):
    """The toy task whose loss is NaN at the given (1-based) steps."""

    def __init__(self, bad_steps, **kw):
        super().__init__(**kw)
        self.bad_steps = set(bad_steps)
        self.finished = False

    def micro_step(self, trainer, batch, step, scale):
        logs = super().micro_step(trainer, batch, step, scale)
        if step + 1 in self.bad_steps:
            for p in self.model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            logs["loss"] = torch.tensor(float("nan"))
        return logs

    def finish(self, trainer):
        self.finished = True


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    task = NanAt({5})
    with pytest.raises(TrainingDiverged) as info:
        Trainer(task, config(tmp_path / "run", steps=6, ckpt_every=3, grad_accum=1, save_to_system=True)).fit()
    message = str(info.value)
    good = tmp_path / "run" / "checkpoints" / "step-0000003"
    assert "step 5" in message and str(good) in message
    assert not task.finished  # the system's weights were not written
    assert latest_checkpoint(tmp_path / "run") == good
    weights, state, _ = load_checkpoint(good)
    assert all(torch.isfinite(t).all() for t in weights["model"].values()) and state["step"] == 3
    assert all(r["step"] < 5 for r in read_log(tmp_path / "run"))  # no log line from the diverged steps


def test_nan_policy_skip_step_skips_and_finishes(tmp_path):
    task = NanAt({2, 4})
    Trainer(task, config(tmp_path / "run", steps=6, grad_accum=1, nan_policy="skip-step", save_to_system=True)).fit()
    assert task.finished
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    log = read_log(tmp_path / "run")
    assert sum(r.get("skipped_steps", 0) for r in log) == 2
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_skip_step_gives_up_when_every_step_is_bad(tmp_path):
    with pytest.raises(TrainingDiverged, match="in a row"):
        Trainer(NanAt(range(1, 40)), config(tmp_path / "run", steps=30, grad_accum=1, nan_policy="skip-step")).fit()


def test_non_finite_weights_with_a_finite_loss_are_never_written(tmp_path):
    task = NanAt(set())
    trainer = Trainer(task, config(tmp_path / "run", steps=3, ckpt_every=0, grad_accum=1))
    original = trainer.task.micro_step

    def poison(trainer_, batch, step, scale):
        logs = original(trainer_, batch, step, scale)
        if step == 2:  # the last step's update makes the weights infinite, its loss is still finite
            for p in task.model.parameters():
                p.grad = torch.full_like(p, float("inf"))
        return logs

    trainer.task.micro_step = poison
    with pytest.raises(TrainingDiverged, match="weights hold NaN or infinite"):
        trainer.fit()
    assert not task.finished and latest_checkpoint(tmp_path / "run") is None


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    Trainer(ToyTask(), config(tmp_path / "run", steps=3)).fit()
    previous = latest_checkpoint(tmp_path / "run")
    real = io.save_state

    def full(obj, path):
        if "step-0000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path)

    monkeypatch.setattr(io, "save_state", full)
    with pytest.raises(CheckpointError) as info:
        Trainer(ToyTask(), config(tmp_path / "run", steps=6, resume="latest")).fit()
    message = str(info.value)
    assert message.startswith("no space left writing ") and f"the previous checkpoint {previous} is intact" in message
    assert latest_checkpoint(tmp_path / "run") == previous
    load_checkpoint(previous)  # still complete
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_full_is_one_sentence_on_the_command_line(tiny_system, tmp_path, monkeypatch, capsys):
    from d2it_cli.main import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "grid.png"))

    monkeypatch.setattr("d2it_cli.images.atomic_path", full)
    with pytest.raises(SystemExit) as info:
        main(["sample", "--system", str(tiny_system), "--out", str(tmp_path / "out"), "--num", "1", "--steps", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().splitlines() == [f"error: no space left writing {tmp_path}/out/grid.png"]


# ------------------------------------------------------------------------------------------------ locks
def test_second_writer_is_refused_naming_pid_and_host(tmp_path):
    with FolderLock(tmp_path / "run", "run directory"):
        with pytest.raises(FolderBusyError) as info:
            FolderLock(tmp_path / "run", "run directory").acquire()
        assert f"process {os.getpid()} on {socket.gethostname()}" in str(info.value)
        with pytest.raises(FolderBusyError):
            Trainer(ToyTask(), config(tmp_path / "run", steps=1)).fit()
    Trainer(ToyTask(), config(tmp_path / "run", steps=1)).fit()  # released: the next run takes it


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from d2it_cli.locks import FolderLock; FolderLock(sys.argv[1]).acquire()",
            str(tmp_path / "out"),
        ],
        check=True,
    )
    assert holder.returncode == 0
    pid, _host = (tmp_path / "out" / ".d2it.lock").read_text().split()
    assert int(pid) != os.getpid()  # the dead process's line is still there ...
    with FolderLock(tmp_path / "out"):  # ... but its flock died with it
        assert (tmp_path / "out" / ".d2it.lock").read_text().split()[0] == str(os.getpid())


def test_live_holder_in_another_process_gives_exit_2(tmp_path, tiny_system):
    code = (
        "import sys, time; from d2it_cli.locks import FolderLock; FolderLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from badinput.conftest import run_main

        (tmp_path / "out" / outputs.MARKER).write_text('{"command": "sample", "files": []}')
        result = run_main(["sample", "--system", tiny_system, "--out", tmp_path / "out", "--num", "1", "--steps", "1"])
        assert result.code == 2 and result.error_lines() == [
            f"error: output folder {tmp_path / 'out'} is in use by process {holder.pid} on {socket.gethostname()}; "
            "wait for it to finish or stop it (one writer per folder)"
        ]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------- outputs
def test_sample_reruns_replace_exactly_our_outputs(tiny_system, tmp_path, run_cli):
    out = tmp_path / "out"
    first = run_cli(
        "sample",
        "--system",
        tiny_system,
        "--out",
        out,
        "--num",
        "3",
        "--steps",
        "1",
        "--batch",
        "3",
        "--npz",
        "--quiet",
    )
    assert first.exit_code == 0, first.output
    (out / "notes.txt").write_text("mine")
    (out / "samples" / "keep.txt").write_text("mine too")
    second = run_cli("sample", "--system", tiny_system, "--out", out, "--num", "1", "--steps", "1", "--quiet")
    assert second.exit_code == 0, second.output
    assert not (out / "samples.npz").exists()  # no stale npz beside the new PNGs
    assert len(list((out / "samples").glob("*.png"))) == 1 and (out / "samples" / "keep.txt").exists()
    assert (out / "notes.txt").read_text() == "mine"
    listed = json.loads((out / outputs.MARKER).read_text())["files"]
    assert "samples.npz" not in listed and "grid.png" in listed


def test_foreign_folder_is_never_cleared(tmp_path):
    folder = tmp_path / "photos"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "holiday.png").write_bytes(b"x")
    for overwrite in (None, False, True):
        with pytest.raises(D2itError, match="not written by d2it"):
            outputs.claim(folder, "sample", overwrite=overwrite)
    assert sorted(p.name for p in folder.rglob("*")) == ["holiday.png", "samples"]


def test_marker_cannot_point_outside_its_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep")
    out = outputs.claim(tmp_path / "out", "sample")
    (out / outputs.MARKER).write_text(json.dumps({"command": "sample", "files": ["../precious.txt"]}))
    with pytest.raises(D2itError, match="outside"):
        outputs.claim(out, "sample")
    assert (tmp_path / "precious.txt").exists()


# ------------------------------------------------------------------------------------------------ small
def test_state_hash_handles_0_dim_tensors():
    a = io.state_sha256({"step": torch.tensor(3), "w": torch.ones(2)})
    assert a != io.state_sha256({"step": torch.tensor(4), "w": torch.ones(2)})


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "a.json", "{}")
        io.save_safetensors({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    for name in ("a.json", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_hidden_temporaries_are_cleaned(tmp_path):
    Trainer(ToyTask(), config(tmp_path / "run", steps=3)).fit()
    stale = [tmp_path / "run" / ".log.jsonl.abc123.tmp", tmp_path / "run" / "checkpoints" / ".latest.x1.tmp"]
    for p in stale:
        p.write_text("half")
    ckpt.clean_temporaries(tmp_path / "run")
    assert not any(p.exists() for p in stale)


def test_latest_pointer_cannot_leave_the_run(tmp_path):
    Trainer(ToyTask(), config(tmp_path / "run", steps=3)).fit()
    (tmp_path / "run" / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(CheckpointError, match="not a checkpoint of this run"):
        latest_checkpoint(tmp_path / "run")


def test_resume_from_another_trainer_is_named(tmp_path):
    Trainer(ToyTask(), config(tmp_path / "run", steps=3)).fit()
    other = ToyTask()
    other.name = "critic-only"
    with pytest.raises(CheckpointError, match="was written by `d2it train toy`"):
        Trainer(other, config(tmp_path / "run", steps=4, resume="latest")).fit()


def test_resume_with_other_data_is_named(tmp_path):
    Trainer(ToyTask(), config(tmp_path / "run", steps=3, data_source="folder-a")).fit()
    with pytest.raises(CheckpointError, match="trained on folder-a, this run is given folder-b"):
        Trainer(ToyTask(), config(tmp_path / "run", steps=4, resume="latest", data_source="folder-b")).fit()


# ------------------------------------------------------------------------------------------- error path
@pytest.mark.parametrize(
    "code,expected",
    [
        (errno.ENOSPC, "no space left writing /data/out/x.png"),
        (errno.EROFS, "/data/out/x.png is on a read-only file system"),
        (errno.EACCES, "permission denied for /data/out/x.png"),
        (errno.EEXIST, "/data/out/x.png already exists"),
        (errno.EISDIR, "/data/out/x.png is a directory, not a file"),
    ],
)
def test_os_errors_become_one_sentence_naming_the_path(code, expected):
    from d2it_cli.commands.failures import sentence

    assert sentence(OSError(code, os.strerror(code), "/data/out/x.png")) == expected


def test_debug_shows_the_traceback():
    from d2it.errors import UnknownComponentError
    from d2it_cli.main import main

    with pytest.raises(UnknownComponentError):
        main(["--debug", "build", "--backbone", "dit-xxl"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    from d2it_cli.main import main

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr("d2it_cli.build.count_system", broken)
    with pytest.raises(ZeroDivisionError):
        main(
            [
                "build",
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
        )


def test_latent_scale_lives_with_the_cache(tiny_system, tmp_path, run_cli, capsys):
    """A kill between writing the manifest and updating d2it.json: stage 2 brings the record in line."""
    from d2it import system as systems

    cache = tmp_path / "cache"
    assert (
        run_cli(
            "encode", "--system", tiny_system, "--data", "synthetic:4", "--out", cache, "--batch", "4", "--quiet"
        ).exit_code
        == 0
    )
    scale = json.loads((cache / "manifest.json").read_text())["latent_scale"]
    systems.update_record(tiny_system, latent_scale=1.0)  # as if encode had been killed before its last write
    result = run_cli(
        "train",
        "grain",
        "--system",
        tiny_system,
        "--cache",
        cache,
        "--steps",
        "1",
        "--batch",
        "2",
        "--quiet",
        "--workers",
        "0",
        "--run-dir",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    assert systems.read_record(tiny_system)[0].latent_scale == pytest.approx(scale, rel=1e-12)


def test_readers_share_a_cache_but_block_its_writer(tiny_system, tmp_path):
    from badinput.conftest import run_main

    cache = tmp_path / "cache"
    cache.mkdir()
    with FolderLock(cache, "latent cache", shared=True), FolderLock(cache, "latent cache", shared=True):
        result = run_main(["encode", "--system", tiny_system, "--data", "synthetic:4", "--out", cache, "--overwrite"])
    assert result.code == 2 and len(result.error_lines()) == 1
    assert f"latent cache {cache} is in use by process" in result.error_lines()[0]


def test_sampling_stops_on_non_finite_images_before_writing(tmp_path, monkeypatch):
    import types

    from test_sample import FakeSystem

    from d2it_cli import generation

    def nan_images(system, classes, **kwargs):
        images = torch.zeros(len(classes), 3, 16, 16)
        images[0, 0, 0, 0] = float("nan")
        return types.SimpleNamespace(images=images, grain_maps=None, latents=torch.zeros(len(classes), 4, 2, 2))

    monkeypatch.setattr(generation, "generate", nan_images)
    settings = generation.SampleSettings(num=2, batch=2, steps=1)
    with pytest.raises(D2itError, match="non-finite images in shard 0"):
        generation.sample_to_dir(FakeSystem(), tmp_path / "out", settings, progress=False)
    assert not list((tmp_path / "out" / "shards").glob("shard-*.npz"))
    assert not (tmp_path / "out" / "samples.npz").exists()
