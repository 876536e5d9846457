"""Progress off a terminal: one plain line per log interval (step, losses, images/s, ETA) instead of a tqdm bar."""

import datetime
import sys

from d2it import dist
from d2it.progress import on_terminal

SKIP = ("step", "epoch", "time", "lr_factor", "images_per_s", "lr")


def lines_enabled(quiet: bool) -> bool:
    """Plain log lines on rank 0 when stdout is not a terminal (SLURM, nohup, a log file) and without --quiet."""
    return not quiet and not on_terminal() and dist.is_main()


def eta(seconds: float) -> str:
    """H:MM:SS of a duration."""
    return str(datetime.timedelta(seconds=max(0, int(round(seconds)))))


def format_line(name: str, record: dict, total_steps: int, seconds_per_step: float) -> str:
    """`train content step 100/1000 | loss 0.1234 | 12.3 img/s | lr 1e-04 | ETA 0:01:02`."""
    values = [(k, v) for k, v in record.items() if k not in SKIP and isinstance(v, float)]
    values.sort(key=lambda kv: kv[0] != "loss")  # the main loss first, the rest in logged order
    losses = " ".join(f"{k} {v:.4g}" for k, v in values)
    parts = [f"train {name} step {record['step']}/{total_steps}"]
    if losses:
        parts.append(losses)
    parts.append(f"{record['images_per_s']:.1f} img/s")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"ETA {eta((total_steps - record['step']) * seconds_per_step)}")
    return " | ".join(parts)


def print_line(text: str):
    """Print one line and flush (so a redirected log shows it at once)."""
    print(text, file=sys.stdout, flush=True)
