"""Shared benchmark helpers: interleaved timing, the machine's matmul rate, tables, peak memory."""

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def sync(device):
    """Wait for queued GPU work so wall-clock times are real."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Time each callable `repeats` times, round-robin so machine noise hits all alike; seconds stats."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "repeats": len(ts)}
        for name, ts in times.items()
    }


def matmul_rate(n: int = 2048, dtype=torch.float32, device="cpu", repeats: int = 5) -> float:
    """Measured multiply-accumulates per second of one n x n x n matrix product (the reference rate)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    stats = interleaved({"mm": lambda: a @ b}, repeats=repeats, warmup=2, device=device)
    return n**3 / stats["mm"]["min"]


def matmul_fn(n: int = 2048, dtype=torch.float32, device="cpu"):
    """(callable, MACs): one n x n x n product to time interleaved with the candidates (the reference rate)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return (lambda: torch.mm(a, b)), n**3


def rate(stats: dict, macs: float) -> float:
    """Best multiply-accumulates per second of a timed callable doing `macs` MACs."""
    return macs / stats["min"]


def ratio(a: dict, b: dict) -> dict:
    """Time ratios a / b of two timing stats: of the medians and of the best (min) times."""
    return {"median": a["median"] / b["median"], "min": a["min"] / b["min"]}


def ms(stats: dict) -> str:
    """'median (min–max)' in milliseconds."""
    return f"{1e3 * stats['median']:.1f} ({1e3 * stats['min']:.1f}–{1e3 * stats['max']:.1f})"


def machine(device="cpu", **extra) -> dict:
    """Where and how a benchmark ran."""
    info = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return {**info, **extra}


def markdown_table(headers, rows) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


PEAK = """
import resource, sys
from pathlib import Path
def _peak():
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def _reset():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set size (VmHWM)
        return True
    except OSError:
        return False
"""


def peak_memory_mb(code: str, setup: str = "") -> float:
    """Peak resident memory (MiB) of `code` in a fresh Python process, counted from after `setup` where Linux allows.

    The peak is reset after `setup` (imports, model building), so it is the peak while `code` ran,
    not the import-time peak; without /proc/self/clear_refs it is the whole process's peak.
    """
    script = f"{PEAK}\n{setup}\n_reset()\n{code}\nprint(_peak(), file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(proc.stderr.strip().splitlines()[-1])


def save(name: str, result: dict, table: str, quick: bool = False):
    """Write results/<name>.json and results/<name>.md (<name>-quick.* for quick runs) and print the table."""
    name = f"{name}-quick" if quick else name
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {RESULTS / name}.json and .md")
