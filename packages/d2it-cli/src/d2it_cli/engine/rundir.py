"""Run identity: a run directory holds one training run, so logs, checkpoints and tracker runs never mix.

A new run (no `--resume`) starts only in a run directory that holds no run yet: no checkpoint and
no logged step. `--resume` continues the run that is there; `--overwrite` deletes it first (only
the files d2it wrote: the log, train.json, previews, checkpoints, tracker folders) and starts over.
"""

import json
import shutil
from pathlib import Path

from d2it.errors import ConfigError
from d2it_cli.engine import checkpoint as ckpt
from d2it_cli.engine.metrics import LOG_FILE
from d2it_cli.outputs import ForeignFolderError
from d2it_cli.trackers import TRACKER_FOLDERS


class RunExists(ConfigError):
    """A new run was started in a run directory that already holds one."""


def last_step(run_dir) -> int | None:
    """The newest step a run directory holds (checkpoint or log line), or None when it holds no run."""
    run_dir = Path(run_dir)
    steps = [step for step, _ in ckpt.list_checkpoints(run_dir)]
    log = run_dir / LOG_FILE
    if log.is_file() and not log.is_symlink():
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption still counts as a run
                record = {}
            steps.append(int(record.get("step", 0)) if isinstance(record, dict) else 0)
    return max(steps) if steps else None


def check_new_run(run_dir, *, resume, overwrite: bool = False):
    """Refuse to start a new run where one already is (every rank: the same answer from the same files)."""
    if resume and overwrite:
        raise ConfigError("--overwrite starts a new run and --resume continues one; give only one of them")
    if resume or overwrite:
        return
    step = last_step(run_dir)
    if step is not None:
        raise RunExists(
            f"{run_dir} already holds a training run (up to step {step}); continue it with --resume latest, start "
            "it over with --overwrite, or give a new --run-dir"
        )


def start_over(output):
    """Delete the earlier run's files from a claimed run directory (rank 0), so nothing of it mixes into the new one.

    Only what d2it wrote goes: the files its marker lists, the checkpoint folder and the trackers' folders.
    """
    if not output.active:
        return
    folder = Path(output.folder)
    folders = [folder / name for name in (ckpt.CKPT_DIR, *TRACKER_FOLDERS)]
    for path in [*(folder / rel for rel in output.recorded), *folders]:  # refuse before anything is deleted
        if path.is_symlink():
            raise ForeignFolderError(
                f"{output.shown / path.relative_to(folder)} is a symbolic link; d2it does not write or delete through "
                "links, remove it or choose another folder"
            )
    for rel in sorted(output.recorded):  # the log, train.json and previews of earlier runs
        output.remove(rel)
    for path in folders:
        if path.is_dir():
            shutil.rmtree(path)
