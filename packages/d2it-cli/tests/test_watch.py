"""Watching a run: plain progress lines off a terminal, and the TensorBoard and wandb trackers (offline)."""

import re
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_engine import ToyTask, config

from d2it.errors import ConfigError
from d2it_cli.engine import Trainer
from d2it_cli.engine.progress import eta, format_line


class PreviewTask(ToyTask):
    """The toy task with a preview image."""

    def write_preview(self, trainer, step, path):
        Image.fromarray(np.full((8, 16, 3), 10 * step, np.uint8)).save(path)


def test_off_a_terminal_one_plain_line_per_log_interval(tmp_path, capsys):
    Trainer(ToyTask(), config(tmp_path, steps=4, log_every=2, quiet=False)).fit()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    n = r"[\d.e+-]+"
    pattern = rf"train toy step (\d)/4 \| loss {n} critic {n} \| [\d.]+ img/s \| lr {n} \| ETA \d:\d\d:\d\d"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["2", "4"]
    assert lines[-1].endswith("ETA 0:00:00")


def test_on_a_terminal_the_bar_replaces_the_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    Trainer(ToyTask(), config(tmp_path, steps=2, quiet=False)).fit()
    assert "train toy step" not in capsys.readouterr().out
    Trainer(ToyTask(), config(tmp_path / "q", steps=2, quiet=True)).fit()


def test_line_format_and_eta():
    record = {"step": 10, "epoch": 0.5, "loss": 0.25, "lr": 1e-4, "lr_factor": 1.0, "images_per_s": 12.0, "time": 0}
    line = format_line("content", record, 100, 2.0)
    assert line == "train content step 10/100 | loss 0.25 | 12.0 img/s | lr 0.0001 | ETA 0:03:00"
    assert eta(3725) == "1:02:05"


def test_tensorboard_writes_scalars_and_previews(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(PreviewTask(), config(tmp_path, steps=4, sample_every=2, report_to=["tensorboard"])).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"toy/loss", "toy/critic", "toy/lr", "toy/images_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("toy/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("toy/preview")] == [2, 4]
    assert events.Images("toy/preview")[0].width == 16


def test_wandb_offline_writes_a_run_with_scalars_and_previews(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    Trainer(PreviewTask(), config(tmp_path / "run", steps=4, sample_every=2, report_to=["wandb"])).fit()
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (records,) = runs[0].glob("run-*.wandb")  # the offline run's records: one history row per log line
    deadline = time.monotonic() + 60
    while (data := records.read_bytes()).count(b"toy/loss") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)  # wandb's service process may still be writing the transaction log after finish()
    assert data.count(b"toy/loss") >= 4 and b"toy/images_per_s" in data and b"global_batch" in data
    previews = sorted(p.name.split("_")[1] for p in (runs[0] / "files" / "media" / "images" / "toy").glob("*.png"))
    assert previews == ["2", "4"]  # preview_<step>_<hash>.png


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'd2it-cli\[wandb\]'"):
        Trainer(ToyTask(), config(tmp_path, steps=1, report_to=["wandb"])).fit()


def test_unknown_or_mixed_report_to_values_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown --report-to 'mlflow'; valid values: none, tensorboard, wandb"):
        Trainer(ToyTask(), config(tmp_path, report_to=["mlflow"]))
    with pytest.raises(ConfigError, match="none cannot be combined"):
        Trainer(ToyTask(), config(tmp_path, report_to=["none", "wandb"]))
    trainer = Trainer(ToyTask(), config(tmp_path, steps=1, report_to=["none"]))
    trainer.fit()
    assert not (tmp_path / "tensorboard").exists()
