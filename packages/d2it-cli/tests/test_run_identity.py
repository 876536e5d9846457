"""Run identity: one run per run directory, the system written only with --save-to-system, trackers kept on resume."""

import json
import sys
import types

import pytest
from test_engine import ToyTask, config

from d2it.io import file_sha256, load_safetensors
from d2it_cli.engine import Trainer, read_log
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.rundir import RunExists, check_new_run, last_step
from d2it_cli.trackers import WANDB_DIR, WANDB_ID_FILE

DVAE = ["--data", "synthetic:8", "--batch", "2", "--lpips-random", "--perceptual-weight", "0", "--log-every", "1"]


def train_dvae(run_cli, system, *extra):
    return run_cli("train", "dvae", "--system", system, *DVAE, "--quiet", *extra)


def test_a_new_run_is_refused_where_a_run_is_and_the_system_is_written_only_when_asked(tiny_system, tmp_path, run_cli):
    run = tmp_path / "run"
    weights = file_sha256(tiny_system / "vae.safetensors")
    record = (tiny_system / "d2it.json").read_text()
    first = train_dvae(run_cli, tiny_system, "--steps", "2", "--ckpt-every", "1", "--run-dir", run)
    assert first.exit_code == 0, first.output
    assert file_sha256(tiny_system / "vae.safetensors") == weights  # no --save-to-system: the system is untouched
    assert (tiny_system / "d2it.json").read_text() == record
    assert "--save-to-system" in first.output and str(run) in first.output
    log = (run / "log.jsonl").read_text()

    again = train_dvae(run_cli, tiny_system, "--steps", "3", "--run-dir", run)
    assert again.exit_code == 2, again.output
    (line,) = [x for x in again.output.splitlines() if x.startswith("error:")]
    assert str(run) in line and "up to step 2" in line and "--resume latest" in line and "--run-dir" in line
    assert (run / "log.jsonl").read_text() == log  # nothing of the refused run was written
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1, 2]

    both = train_dvae(run_cli, tiny_system, "--steps", "3", "--run-dir", run, "--resume", "latest", "--overwrite")
    assert both.exit_code == 2 and "give only one of them" in both.output

    # a finished run's weights go into the system later: resume it with --save-to-system (no step is trained)
    saved = train_dvae(run_cli, tiny_system, "--steps", "2", "--run-dir", run, "--resume", "latest", "--save-to-system")
    assert saved.exit_code == 0, saved.output
    final, _ = load_safetensors(tiny_system / "vae.safetensors")
    trained, _, _ = ckpt.load_checkpoint(run / "checkpoints" / "step-0000002", need_rng=False)
    assert all((final[k] == trained["vae"][k]).all() for k in final)
    assert [r["step"] for r in read_log(run)] == [1, 2]


def test_overwrite_starts_the_run_over_and_nothing_of_the_old_run_stays(tiny_system, tmp_path, run_cli):
    run = tmp_path / "run"
    assert train_dvae(run_cli, tiny_system, "--steps", "3", "--ckpt-every", "1", "--run-dir", run).exit_code == 0
    (run / "notes.txt").write_text("mine")  # a user's file beside the run stays
    over = train_dvae(run_cli, tiny_system, "--steps", "1", "--run-dir", run, "--overwrite", "--save-to-system")
    assert over.exit_code == 0, over.output
    assert [r["step"] for r in read_log(run)] == [1]
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000001"
    assert (run / "notes.txt").read_text() == "mine"
    assert f"wrote {tiny_system}/vae.safetensors" in over.output


def test_the_default_run_directory_inside_the_system_is_refused_too(tiny_system, run_cli):
    assert train_dvae(run_cli, tiny_system, "--steps", "1").exit_code == 0
    again = train_dvae(run_cli, tiny_system, "--steps", "1")
    assert again.exit_code == 2 and str(tiny_system / "runs" / "dvae") in again.output


class FailsAtOnce(ToyTask):
    """A run that fails in its first step, after train.json and the (empty) log were written."""

    def micro_step(self, trainer, batch, step, scale):
        raise RuntimeError("boom")


def test_the_engine_refuses_to_mix_runs_and_a_failed_start_does_not_block(tmp_path):
    run = tmp_path / "run"
    check_new_run(run, resume=None)  # no folder yet
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(FailsAtOnce(), config(run, steps=2)).fit()
    assert (run / "train.json").is_file() and last_step(run) is None
    Trainer(ToyTask(), config(run, steps=2, ckpt_every=0)).fit()  # the end of a run is checkpointed
    with pytest.raises(RunExists, match="up to step 2"):
        Trainer(ToyTask(), config(run, steps=4)).fit()
    assert [r["step"] for r in read_log(run)] == [1, 2]
    Trainer(ToyTask(), config(run, steps=4, resume="latest")).fit()
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "log.jsonl").write_text('{"step": 7}\n{"ste')  # a log cut short still names its run
    assert last_step(cut) == 7


class FakeWandb(types.ModuleType):
    """Records `wandb.init` calls; its runs record what they log."""

    def __init__(self):
        super().__init__("wandb")
        self.inits = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        run = types.SimpleNamespace(logged=[])
        run.log = lambda values, step: run.logged.append(step)
        run.finish = lambda: None
        return run

    def teardown(self):
        pass


def test_wandb_keeps_its_run_across_resumes(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    Trainer(ToyTask(), config(run, steps=2, report_to=["wandb"])).fit()
    Trainer(ToyTask(), config(run, steps=4, resume="latest", report_to=["wandb"])).fit()
    Trainer(ToyTask(), config(tmp_path / "other", steps=1, report_to=["wandb"])).fit()
    first, resumed, other = fake.inits
    assert first["id"] == resumed["id"] == (run / WANDB_DIR / WANDB_ID_FILE).read_text().strip()
    assert first["resume"] == resumed["resume"] == "allow"
    assert other["id"] != first["id"]


def test_tensorboard_appends_and_hides_what_an_interrupted_run_logged_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    Trainer(ToyTask(), config(run, steps=4, ckpt_every=2, report_to=["tensorboard"])).fit()
    # "interrupted" after step 4 with its last checkpoint at step 2: resume from there
    (run / "checkpoints" / "latest").write_text("step-0000002\n")
    ckpt_4 = run / "checkpoints" / "step-0000004"
    for f in sorted(ckpt_4.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    ckpt_4.rmdir()
    Trainer(ToyTask(lr=5e-2), config(run, steps=4, resume="latest", report_to=["tensorboard"])).fit()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one folder, two sessions
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("toy/loss")]
    assert [step for step, _ in logged] == [1, 2, 3, 4]  # each step once
    resumed = {r["step"]: r["loss"] for r in read_log(run)}
    assert [value for _, value in logged[2:]] == pytest.approx([resumed[3], resumed[4]])  # the resumed run's
    assert json.loads((run / "train.json").read_text())["resume"] == "latest"
