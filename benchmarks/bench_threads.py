"""CPU threads under load: a training step's time quiet and beside two busy processes, per thread setting.

OpenMP threads that wait by spinning burn the cores other processes need, and a step then waits for its own
descheduled threads (issue 20). Each setting runs in a fresh interpreter, because the OpenMP runtime reads
OMP_WAIT_POLICY and GOMP_SPINCOUNT when torch loads it; rounds alternate quiet and loaded (two pure-Python
busy loops, stopped after the round) and rotate the settings so machine noise hits all alike; each run
records the cores other processes used meanwhile (near 0 when quiet). The steps: a D²iT content step at the
CPU demo's size (DiT-S width, 3 + 1 RefineNet blocks, 8x8 latent, batch 32, AdamW) and a small MLP
(256-1024-1024-256, batch 256, AdamW). "d2it default" is what `d2it` chooses as it starts
(`d2it_cli.threads.configure`: passive threads when other processes keep the CPUs busy).
Target: loaded <= 2.5x quiet (a fair share of two cores alone gives 2x), quiet within 3% of torch's default.
Run: python benchmarks/run.py threads [--quick] [--setting NAME=VAR=VALUE,...] [--only NAME,...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve()
# what the runtimes read; cleared so each setting starts from torch's own defaults, whatever the caller set
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
# name -> (environment variables, torch.set_num_threads value or None, call d2it_cli.threads.configure first)
SETTINGS = {
    "torch default": ({}, None, False),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None, False),
    "1 thread": ({}, 1, False),
    "d2it default": ({}, None, True),
}
# a pure-Python busy loop that ends when its parent (this benchmark) is gone, however that ended
BUSY = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(10**6): pass"
TARGET_LOADED, TARGET_QUIET = 2.5, 1.03


def child(steps: int, warmup: int, num_threads: int | None, configure: bool):
    """Time `steps` of each training step in this (fresh) process; print {step: [seconds]} as JSON."""
    from d2it_cli import threads  # no torch: it must load after `configure`

    chosen = threads.configure() if configure else None
    import torch

    from d2it.registry import default_registry

    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(0)
    reg = default_registry()
    attention = reg.create("attention", "sdpa")
    width = {"depth": 3, "hidden_size": 192, "num_heads": 3}
    backbone = reg.create("backbone", "dit-s", width, input_size=8, in_channels=4, num_classes=4, grains=2,
                          attention=attention)  # fmt: skip
    content = reg.create("refiner", "window16", {"depth": 1}, backbone=backbone, attention=attention).train()
    mlp = torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024), torch.nn.GELU(),
        torch.nn.Linear(1024, 256),
    )  # fmt: skip
    calls = {"content step": (content, content.example_inputs(32)), "MLP step": (mlp, (torch.randn(256, 256),))}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in calls.items()}

    def step(name):
        model, args = calls[name]
        optimizers[name].zero_grad(set_to_none=True)
        model(*args).square().mean().backward()
        optimizers[name].step()

    for name in calls:
        for _ in range(warmup):
            step(name)
    times = {name: [] for name in calls}
    before, own_before, start_all = threads.busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(steps):
        for name in calls:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    after, own_after, elapsed = threads.busy_cpu_seconds(), time.process_time(), time.perf_counter() - start_all
    # the cores the rest of the machine kept busy meanwhile: near 0 quiet, the busy loops' share when loaded
    others = None if before is None else (after - before - (own_after - own_before)) / elapsed
    env = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
    print(json.dumps({"times": times, "threads": torch.get_num_threads(), "env": env, "others_cores": others,
                      "d2it_chose": chosen}))  # fmt: skip


def run_setting(name: str, spec, steps: int, warmup: int) -> dict:
    """One fresh interpreter timing the steps under setting `name`."""
    variables, threads, configure = spec
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    argv = [sys.executable, str(HERE), "--child", "--steps", str(steps), "--warmup", str(warmup)]
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--configure"] if configure else []
    proc = subprocess.run(argv, env={**env, **variables}, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"setting {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextmanager
def busy(count: int):
    """`count` processes spinning pure-Python loops for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY, str(os.getpid())]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them reach full speed
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def parse_settings(items) -> dict:
    """Extra settings from --setting NAME=VAR=VALUE[,VAR=VALUE] (to try e.g. GOMP_SPINCOUNT values)."""
    extra = {}
    for item in items:
        name, _, pairs = item.partition("=")
        variables = dict(p.split("=", 1) for p in pairs.split(",") if p)
        extra[name] = (variables, None, False)
    return extra


def summarise(times: dict) -> dict:
    """Medians and ratios per setting and step: loaded / quiet, and quiet against torch's default quiet."""
    out = {}
    for name, loads in times.items():
        out[name] = {}
        for step, quiet in loads["quiet"].items():
            loaded = loads["loaded"][step]
            base = statistics.median(times["torch default"]["quiet"][step])
            q, lo = statistics.median(quiet), statistics.median(loaded)
            out[name][step] = {
                "quiet_median": q, "loaded_median": lo, "quiet_min": min(quiet), "loaded_min": min(loaded),
                "loaded_over_quiet": lo / q, "quiet_over_torch_default": q / base,
                "loaded_over_torch_default": lo / base, "repeats": len(quiet),
            }  # fmt: skip
    return out


def table(summary: dict) -> str:
    """The Markdown table: one row per setting and step."""
    from common import markdown_table

    rows = []
    for name, steps in summary.items():
        for step, s in steps.items():
            ok = s["loaded_over_quiet"] <= TARGET_LOADED and s["quiet_over_torch_default"] <= TARGET_QUIET
            rows.append([
                name, step, f"{1e3 * s['quiet_median']:.1f}", f"{1e3 * s['loaded_median']:.1f}",
                f"{s['loaded_over_quiet']:.2f}x", f"{s['quiet_over_torch_default']:.3f}x",
                f"{s['loaded_over_torch_default']:.2f}x", "yes" if ok else "no",
            ])  # fmt: skip
    headers = ["setting", "step", "quiet ms", "loaded ms", "loaded / quiet", "quiet / torch default quiet",
               "loaded / torch default quiet", f"<= {TARGET_LOADED}x and <= {TARGET_QUIET}x"]  # fmt: skip
    return markdown_table(headers, rows)


def run(quick: bool, argv=None) -> dict:
    """Alternate quiet and loaded rounds over every setting; print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog="run.py threads")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VAR=VALUE,...")
    parser.add_argument("--only", help="comma-separated setting names to run (torch default is always run)")
    parser.add_argument("--rounds", type=int, default=1 if quick else 3)
    args = parser.parse_args(argv or [])
    from common import machine, save

    settings = {**SETTINGS, **parse_settings(args.setting)}
    if args.only:
        keep = {"torch default", *args.only.split(",")}
        settings = {name: spec for name, spec in settings.items() if name in keep}
    steps, warmup = (3, 1) if quick else (8, 3)
    times = {name: {"quiet": {}, "loaded": {}} for name in settings}
    seen = {}
    names = list(settings)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotate: no setting always first
        for load in ("quiet", "loaded"):
            with busy(2 if load == "loaded" else 0):
                for name in order:
                    result = run_setting(name, settings[name], steps, warmup)
                    runs = seen.setdefault(name, {}).setdefault(load, [])
                    runs.append({k: result[k] for k in ("threads", "env", "others_cores", "d2it_chose")})
                    for step, ts in result["times"].items():
                        times[name][load].setdefault(step, []).extend(ts)
            print(f"round {round_ + 1}/{args.rounds} {load} done", flush=True)
    summary = summarise(times)
    setup = machine(cpus=os.cpu_count(), rounds=args.rounds, steps_per_round=steps, warmup=warmup, busy_processes=2)
    result = {"setup": setup, "settings": seen, "results": summary, "times": times}
    save("threads", result, table(summary) + "\n\n" + background(seen), quick=quick)
    return result


def background(seen: dict) -> str:
    """A line on how busy the machine was: the cores other processes used during the quiet and loaded runs."""
    parts = []
    for load in ("quiet", "loaded"):
        cores = [r["others_cores"] for runs in seen.values() for r in runs[load] if r["others_cores"] is not None]
        if cores:
            parts.append(f"{load} runs {max(0.0, statistics.mean(cores)):.2f} on average (at most {max(cores):.2f})")
    chose = {
        load: sorted({", ".join(f"{k}={v}" for k, v in (r["d2it_chose"] or {}).items()) or "torch's default"
                      for r in runs})
        for load, runs in seen.get("d2it default", {}).items()
    }  # fmt: skip
    return (f"Cores other processes used meanwhile: {'; '.join(parts) or 'not measured'}. d2it's default chose: "
            + "; ".join(f"{load} {' / '.join(c)}" for load, c in chose.items()) + ".")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--configure", action="store_true")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if opts.child:
        child(opts.steps, opts.warmup, opts.threads, opts.configure)
    else:
        sys.path.insert(0, str(HERE.parent))
        run(opts.quick)
