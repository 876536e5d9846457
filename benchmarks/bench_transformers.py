"""CPU fp32 speed of D²iT-B against DiT-B/2 and DiT-B/1 (reduced depth), and of window vs global attention.

Every time sits beside its GMAC ratio and, as throughput, beside the machine's fp32 matmul rate measured
in the same run. Prints a Markdown table and writes benchmarks/results/transformers.json (`--quick`: a
< 30 s smoke run at width 192 on an 8x8 latent, written to transformers-quick.json).
Run: python benchmarks/bench_transformers.py [--quick]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from d2it.counting import count
from d2it.registry import default_registry

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


class Matmul:
    """The machine's fp32 matmul rate: one large torch.mm, timed whenever `sample` is called."""

    def __init__(self, n: int):
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(self.a, self.b)
        self.times: list[float] = []

    def sample(self, repeats: int = 1):
        """Time `repeats` more products."""
        self.times += [_timed(lambda: torch.mm(self.a, self.b)) for _ in range(repeats)]

    def result(self) -> dict:
        """Timing statistics and the best rate in GMAC/s."""
        return {"n": self.n, **_stats(self.times), "gmacs_per_s": self.n**3 / min(self.times) / 1e9}


def build_models(input_size: int, width: dict, depth: int, refine_depth: int) -> dict:
    """DiT-B/2, DiT-B/1 (depth `depth`) and D²iT-B (routed depth - refine_depth + RefineNet window16)."""
    reg = default_registry()
    attention = reg.create("attention", "sdpa")
    ctx = dict(input_size=input_size, in_channels=4, num_classes=1000, attention=attention)
    torch.manual_seed(0)
    models = {
        "DiT-B/2": reg.create("backbone", "dit-b", {**width, "depth": depth}, grains=None, **ctx),
        "DiT-B/1": reg.create("backbone", "dit-b/1", {**width, "depth": depth}, grains=None, **ctx),
    }
    backbone = reg.create("backbone", "dit-b", {**width, "depth": depth - refine_depth}, grains=2, **ctx)
    refine = {"depth": refine_depth}
    models["D²iT-B"] = reg.create("refiner", "window16", refine, backbone=backbone, attention=attention)
    return models


def time_models(models: dict, batch: int, repeats: int, matmul: Matmul) -> dict:
    """Forward and forward+backward times, repeats interleaved across models and matmul so load hits all alike."""
    inputs = {name: m.example_inputs(batch) for name, m in models.items()}
    fwd = {name: [] for name in models}
    bwd = {name: [] for name in models}

    def forward(name):
        models[name].eval()
        with torch.no_grad():
            models[name](*inputs[name])

    def train_step(name):
        model = models[name].train()
        model.zero_grad(set_to_none=True)
        model(*inputs[name]).square().mean().backward()

    for name in models:  # warm-up
        forward(name)
        train_step(name)
    for _ in range(repeats):
        matmul.sample(2)
        for name in models:
            fwd[name].append(_timed(lambda: forward(name)))  # noqa: B023 (called at once)
            bwd[name].append(_timed(lambda: train_step(name)))  # noqa: B023
    return {name: {"forward": _stats(fwd[name]), "forward_backward": _stats(bwd[name])} for name in models}


def attention_blocks(cells: list[int], width: dict, batch: int, repeats: int) -> dict:
    """Forward time of one RefineNet block with window16 vs global attention on a square cell grid."""
    from d2it_transformers.content import WindowAttention
    from d2it_transformers.dit import DiTBlock

    attention = default_registry().create("attention", "sdpa")
    out = {}
    for n in cells:
        side = int(round(n**0.5))
        row = {}
        for label, window in (("window16", 16), ("global", None)):
            torch.manual_seed(0)
            d, heads = width["hidden_size"], width["num_heads"]
            block = DiTBlock(d, heads, attn=WindowAttention(d, heads, attention, (side, side), window)).eval()
            x, c = torch.randn(batch, side * side, d), torch.randn(batch, d)
            with torch.no_grad():
                block(x, c)
                times = [_timed(lambda: block(x, c)) for _ in range(repeats)]  # noqa: B023 (called at once)
            macs = count(block, x, c).macs
            row[label] = {**_stats(times), "gmacs": macs / 1e9}
        row["time_ratio"] = row["window16"]["median_s"] / row["global"]["median_s"]
        row["gmac_ratio"] = row["window16"]["gmacs"] / row["global"]["gmacs"]
        out[str(side * side)] = row
    return out


def run(quick: bool) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick` is a smoke run of well under 30 s."""
    input_size, batch, repeats = (8, 4, 2) if quick else (32, 4, 5)
    width = {"hidden_size": 192, "num_heads": 3} if quick else {"hidden_size": 768, "num_heads": 12}
    depth, refine_depth = (2, 1) if quick else (4, 1)
    matmul = Matmul(512 if quick else 2048)
    models = build_models(input_size, width, depth, refine_depth)
    gmacs = {}
    for name, model in models.items():
        with torch.random.fork_rng():
            gmacs[name] = count(model, *model.example_inputs(batch)).macs / 1e9
    times = time_models(models, batch, repeats, matmul)
    rate = matmul.result()
    base = "DiT-B/1"
    rows = {}
    for name in models:
        row = {"gmacs": gmacs[name], "params_m": sum(p.numel() for p in models[name].parameters()) / 1e6}
        for mode, factor in (("forward", 1), ("forward_backward", 3)):  # backward = 2x forward MACs
            t = times[name][mode]
            row[mode] = {
                **t,
                "time_ratio_vs_dit_b1": t["median_s"] / times[base][mode]["median_s"],
                "gmac_ratio_vs_dit_b1": gmacs[name] / gmacs[base],
                # best model time against the best matmul time: both as little disturbed by load as we saw
                "fraction_of_matmul_rate": factor * gmacs[name] / t["min_s"] / rate["gmacs_per_s"],
            }
        rows[name] = row
    cells = [64] if quick else [1024, 2304, 4096]
    result = {
        "setup": {
            "device": "cpu",
            "dtype": "float32",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "batch": batch,
            "latent": [4, input_size, input_size],
            "width": width["hidden_size"],
            "heads": width["num_heads"],
            "depth": depth,
            "d2it_split": f"{depth - refine_depth}+{refine_depth} (window16)",
            "repeats": repeats,
            "quick": quick,
        },
        "matmul": rate,
        "models": rows,
        "attention_blocks": attention_blocks(cells, width, 1, 1 if quick else 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("transformers-quick.json" if quick else "transformers.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {path}")
    return result


def markdown(result: dict) -> str:
    """The result as Markdown tables."""
    s = result["setup"]
    lines = [
        f"CPU fp32, {s['threads']} threads, batch {s['batch']}, latent {'x'.join(map(str, s['latent']))}, "
        f"width {s['width']}, depth {s['depth']} (D²iT {s['d2it_split']}); matmul rate "
        f"{result['matmul']['gmacs_per_s']:.1f} GMAC/s (best {result['matmul']['n']}² torch.mm, sampled between "
        "repeats); % of matmul rate = best time's GMAC/s over it (backward counted as 2x forward)",
        "",
        "| model | GMACs | mode | median ms (min–max) | median time / DiT-B/1 | GMACs / DiT-B/1 | % of matmul rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["models"].items():
        for mode in ("forward", "forward_backward"):
            r = row[mode]
            lines.append(
                f"| {name} | {row['gmacs']:.2f} | {mode.replace('_', '+')} | {1e3 * r['median_s']:.0f} "
                f"({1e3 * r['min_s']:.0f}–{1e3 * r['max_s']:.0f}) | {r['time_ratio_vs_dit_b1']:.3f} | "
                f"{r['gmac_ratio_vs_dit_b1']:.3f} | {100 * r['fraction_of_matmul_rate']:.0f}% |"
            )
    lines += [
        "",
        "| cells | window16 ms | global ms | time ratio | GMAC ratio |",
        "|---|---|---|---|---|",
    ]
    for cells, row in result["attention_blocks"].items():
        lines.append(
            f"| {cells} | {1e3 * row['window16']['median_s']:.0f} | {1e3 * row['global']['median_s']:.0f} | "
            f"{row['time_ratio']:.3f} | {row['gmac_ratio']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
