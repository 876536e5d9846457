"""How torch's CPU threads wait: d2it's OpenMP setting, chosen as it starts, before torch is imported.

OpenMP threads wait for work by spinning (GNU OpenMP, torch's pip wheels: about 3 ms), which keeps their
cores busy: beside two busy processes on two cores, torch's default took 5-30x its quiet time per training
step, passive threads (OMP_WAIT_POLICY=PASSIVE: sleep at once) about 2x. On an idle machine passive threads
cost about 20% (they must be woken for every parallel region). So `d2it` measures what other processes use
as it starts and makes the threads passive only on a busy machine (benchmarks/bench_threads.py). The OpenMP
runtime reads the variable once, when torch loads it, so `configure` must run before anything imports torch;
a wait policy the user set always wins, and a load that begins later is not seen.
"""

import os
import sys
import time
from pathlib import Path

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
# a user who set any of these chose how threads wait: leave them alone
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BUSY_CORES = 0.5  # other processes using at least this many cores make the machine busy
WINDOW = 0.1  # seconds of measuring at start


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot, all cores together (Linux; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4]  # the rest: user, nice, system, irq, softirq and steal (other guests)
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def others_cores(window: float = WINDOW) -> float | None:
    """How many cores the other processes kept busy during the next `window` seconds (None: cannot tell)."""
    first, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    if first is None:
        return None
    time.sleep(window)
    last = busy_cpu_seconds()
    return max(0.0, (last - first - (time.process_time() - own)) / (time.perf_counter() - start))


def configure(environ=None, modules=None, busy=None) -> dict:
    """Make torch's threads passive on a busy machine (`busy`: others' cores, measured when None); what it set.

    Nothing changes when the user chose a wait policy in `environ` (os.environ) or torch is among `modules`
    (sys.modules) already: too late to take effect, and child processes should inherit the user's setting.
    """
    environ = os.environ if environ is None else environ
    if "torch" in (sys.modules if modules is None else modules) or any(name in environ for name in USER_CHOICES):
        return {}
    busy = others_cores() if busy is None else busy
    if busy is None or busy < BUSY_CORES:
        return {}
    environ.update(PASSIVE)
    return dict(PASSIVE)
