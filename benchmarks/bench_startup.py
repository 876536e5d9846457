"""Start-up time: `d2it --help` and `d2it plugins` against `python -c "import torch"`, timed interleaved.

Each command runs in a fresh interpreter; rounds alternate between the commands so machine noise hits
all alike. Target (issue 13): `d2it --help` within 1.3x the time of importing torch.
Run: python benchmarks/run.py startup [--quick]
"""

import statistics
import subprocess
import sys
import time

from common import machine, markdown_table, save

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "d2it --help": [sys.executable, "-m", "d2it_cli", "--help"],
    "d2it plugins": [sys.executable, "-m", "d2it_cli", "plugins"],
}


def run(quick: bool) -> dict:
    """Time every command `repeats` times, interleaved; print the table and write the JSON."""
    repeats = 2 if quick else 7
    times = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the file cache
        subprocess.run(argv, capture_output=True, check=True)
    for _ in range(repeats):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c 'import torch'"])
    stats = {
        name: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "repeats": len(ts),
               "ratio_to_import_torch": statistics.median(ts) / base}
        for name, ts in times.items()
    }  # fmt: skip
    rows = [[name, f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['ratio_to_import_torch']:.2f}x"]
            for name, s in stats.items()]  # fmt: skip
    table = markdown_table(["command", "median s", "min s", "vs import torch"], rows)
    save("startup", {"setup": machine(repeats=repeats), "results": stats}, table, quick=quick)
    return stats


if __name__ == "__main__":
    run("--quick" in sys.argv)
