"""What a run reports: the JSON-lines log, the trackers, and the progress bar or plain lines (rank 0)."""

import json
import time
from pathlib import Path

import torch

from d2it import dist, io
from d2it.progress import progress_bar
from d2it_cli.engine import progress

LOG_FILE = "log.jsonl"


def read_log(run_dir) -> list[dict]:
    """The JSON-lines training log of a run directory."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_log(path: Path, step: int):
    """Drop log lines past `step` (written by an interrupted run after its last checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    io.atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricLogger:
    """Averages each step's values over a log interval and the ranks, and writes them to the log and trackers."""

    def __init__(self, name: str, *, total_steps, start_step, log_every, quiet, log_file=None, trackers=()):
        self.name, self.total_steps, self.log_every = name, total_steps, log_every
        self.log_file, self.trackers = log_file, list(trackers)
        self.lines = progress.lines_enabled(quiet)
        self.bar = progress_bar(
            total=total_steps,
            initial=start_step,
            desc=f"train {name}",
            enabled=not quiet and dist.is_main(),
            dynamic_ncols=True,
        )
        self.history: list[dict] = []
        self.sums: dict[str, torch.Tensor | float] = {}  # the values since the last report
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()

    def _reset(self):
        self.sums = {}
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()

    def add(self, values: dict):
        """Add one step's values (device tensors are fine: nothing syncs here)."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def count(self, images: int):
        """Count one optimizer step of `images` images."""
        self.steps += 1
        self.images += images
        self.bar.update(1)

    def due(self, step: int) -> bool:
        """Whether step `step` is reported: every `log_every` steps and the last."""
        return step % self.log_every == 0 or step == self.total_steps

    def write(self, step: int, extra: dict) -> dict:
        """Average the values since the last report over steps and ranks (a collective) and report them with `extra`."""
        values = dist.all_reduce_mean({k: float(v) / self.steps for k, v in self.sums.items()})
        elapsed = time.perf_counter() - self.t0
        record = {"step": step, **extra, **{k: values[k] for k in sorted(values)}}
        record.update(images_per_s=self.images / max(elapsed, 1e-9), time=time.time())
        self.history.append(record)
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
            scalars = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, float)}
            for tracker in self.trackers:
                tracker.log_scalars(scalars, step)
        if self.lines:
            per_step = elapsed / max(self.steps, 1)
            progress.print_line(progress.format_line(self.name, record, self.total_steps, per_step))
        main_loss = values.get("loss", next(iter(values.values()), float("nan")))
        self.bar.set_postfix(loss=f"{main_loss:.4f}", refresh=False)
        self._reset()
        return record

    def image(self, tag: str, path: Path | None, step: int):
        """Send a preview image to the trackers."""
        if path is not None and path.is_file():
            for tracker in self.trackers:
                tracker.log_image(tag, path, step)

    def close(self):
        """Close the bar, the log file and the trackers."""
        self.bar.close()
        if self.log_file is not None:
            self.log_file.close()
        for tracker in self.trackers:
            tracker.close()
