"""CPU fp32 speed of D²iT-B against DiT-B/2 and DiT-B/1 (reduced depth), and of window vs global attention.

Every model and a 2048² matmul (the machine's fp32 rate) are timed interleaved in one process; each time
sits beside its GMAC ratio and, as throughput, beside the matmul rate. Targets (issue 4/7): dense D²iT-B
forward+backward >= 60% of the matmul rate; D²iT-B / DiT-B/1 time <= 0.45. Writes results/transformers.*
(`--quick`: a < 30 s smoke run at width 192 on an 8x8 latent, results/transformers-quick.*).
Run: python benchmarks/run.py transformers [--quick]
"""

import argparse

import torch
from common import interleaved, machine, markdown_table, matmul_fn, ms, rate, ratio, save

from d2it.counting import count
from d2it.registry import default_registry


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
    models["D²iT-B"] = reg.create(
        "refiner", "window16", {"depth": refine_depth}, backbone=backbone, attention=attention
    )
    return models


def model_calls(models: dict, batch: int) -> dict:
    """'<name> forward' and '<name> forward+backward' callables on each model's example inputs."""
    calls = {}
    for name, model in models.items():
        args = model.example_inputs(batch)

        def forward(model=model, args=args):
            model.eval()
            with torch.no_grad():
                model(*args)

        def train_step(model=model, args=args):
            model.train()
            model.zero_grad(set_to_none=True)
            model(*args).square().mean().backward()

        calls[f"{name} forward"], calls[f"{name} forward+backward"] = forward, train_step
    return calls


def attention_blocks(cells: list[int], width: dict, batch: int, repeats: int) -> dict:
    """Forward time of one RefineNet block with window16 vs global attention on a square cell grid."""
    from d2it_transformers.dit import DiTBlock
    from d2it_transformers.refine import WindowAttention

    attention = default_registry().create("attention", "sdpa")
    out = {}
    d, heads = width["hidden_size"], width["num_heads"]
    for n in cells:
        side = int(round(n**0.5))
        torch.manual_seed(0)
        blocks = {w: DiTBlock(d, heads, attn=WindowAttention(d, heads, attention, (side, side), m)).eval()
                  for w, m in (("window16", 16), ("global", None))}  # fmt: skip
        x, c = torch.randn(batch, side * side, d), torch.randn(batch, d)
        with torch.no_grad():
            times = interleaved({w: (lambda b=b, x=x, c=c: b(x, c)) for w, b in blocks.items()}, repeats=repeats)
        gmacs = {w: count(b, x, c).macs / 1e9 for w, b in blocks.items()}
        out[str(side * side)] = {
            **{w: {**times[w], "gmacs": gmacs[w]} for w in blocks},
            "time_ratio": ratio(times["window16"], times["global"]),
            "gmac_ratio": gmacs["window16"] / gmacs["global"],
        }
    return out


def run(quick: bool) -> dict:
    """Measure, print the Markdown tables and write the JSON; `quick` is a smoke run of well under 30 s."""
    input_size, batch, repeats = (8, 4, 3) if quick else (32, 4, 5)
    width = {"hidden_size": 192, "num_heads": 3} if quick else {"hidden_size": 768, "num_heads": 12}
    depth, refine_depth = (2, 1) if quick else (4, 1)
    models = build_models(input_size, width, depth, refine_depth)
    gmacs = {}
    for name, model in models.items():
        with torch.random.fork_rng():
            gmacs[name] = count(model, *model.example_inputs(batch)).macs / 1e9
    mm, mm_macs = matmul_fn(512 if quick else 2048)
    times = interleaved({"matmul": mm, **model_calls(models, batch)}, repeats=repeats)
    matmul_rate = rate(times["matmul"], mm_macs)
    base = "DiT-B/1"
    rows = {}
    for name in models:
        row = {"gmacs": gmacs[name], "params_m": sum(p.numel() for p in models[name].parameters()) / 1e6}
        for mode, factor in (("forward", 1), ("forward+backward", 3)):  # backward = 2x forward MACs
            t = times[f"{name} {mode}"]
            row[mode] = {
                **t,
                "time_ratio_vs_dit_b1": ratio(t, times[f"{base} {mode}"]),
                "gmac_ratio_vs_dit_b1": gmacs[name] / gmacs[base],
                # best model time against the best matmul time: both as little disturbed by load as we saw
                "fraction_of_matmul_rate": factor * gmacs[name] * 1e9 / t["min"] / matmul_rate,
            }
        rows[name] = row
    d2it = rows["D²iT-B"]["forward+backward"]
    result = {
        "setup": machine(
            batch=batch,
            latent=[4, input_size, input_size],
            width=width["hidden_size"],
            heads=width["num_heads"],
            depth=depth,
            d2it_split=f"{depth - refine_depth}+{refine_depth} (window16)",
            repeats=repeats,
            quick=quick,
            dtype="float32",
        ),  # fmt: skip
        "matmul": {**times["matmul"], "gmacs_per_s": matmul_rate / 1e9},
        "models": rows,
        "attention_blocks": attention_blocks([64] if quick else [1024, 2304, 4096], width, 1, 2 if quick else 3),
        "targets": {
            "d2it_b_fwd_bwd_fraction_of_matmul_rate >= 0.60": d2it["fraction_of_matmul_rate"],
            "d2it_b_over_dit_b1_time <= 0.45 (min; median)": [
                d2it["time_ratio_vs_dit_b1"]["min"],
                d2it["time_ratio_vs_dit_b1"]["median"],
            ],
        },
    }
    save("transformers", result, markdown(result), quick)
    return result


def markdown(result: dict) -> str:
    """The result as Markdown tables."""
    s = result["setup"]
    head = (
        f"CPU fp32, {s['threads']} threads, batch {s['batch']}, latent {'x'.join(map(str, s['latent']))}, width "
        f"{s['width']}, depth {s['depth']} (D²iT {s['d2it_split']}), {s['repeats']} interleaved repeats; matmul rate "
        f"{result['matmul']['gmacs_per_s']:.1f} GMAC/s (best time); % of matmul rate = best time's GMAC/s over it "
        "(backward counted as 2x forward)"
    )
    rows = []
    for name, row in result["models"].items():
        for mode in ("forward", "forward+backward"):
            r = row[mode]
            rows.append([name, f"{row['gmacs']:.2f}", mode, ms(r),
                         f"{r['time_ratio_vs_dit_b1']['median']:.3f}; {r['time_ratio_vs_dit_b1']['min']:.3f}",
                         f"{r['gmac_ratio_vs_dit_b1']:.3f}", f"{100 * r['fraction_of_matmul_rate']:.0f}%"])  # fmt: skip
    table = markdown_table(
        ["model", "GMACs", "mode", "ms median (min–max)", "time / DiT-B/1 (median; min)", "GMACs / DiT-B/1",
         "% of matmul rate"], rows)  # fmt: skip
    blocks = markdown_table(
        ["cells", "window16 ms", "global ms", "time ratio (median; min)", "GMAC ratio"],
        [[c, ms(r["window16"]), ms(r["global"]), f"{r['time_ratio']['median']:.3f}; {r['time_ratio']['min']:.3f}",
          f"{r['gmac_ratio']:.3f}"] for c, r in result["attention_blocks"].items()],
    )  # fmt: skip
    targets = "\n".join(f"- {k}: {v if isinstance(v, float) else v}" for k, v in result["targets"].items())
    return f"{head}\n\n{table}\n\n{blocks}\n\nTargets:\n{targets}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
