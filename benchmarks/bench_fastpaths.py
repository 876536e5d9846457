"""Fast paths on this machine: each option's time against the plain path, interleaved in one process.

torch.compile (inductor) of the content transformer, gradient checkpointing (time and peak memory from a
fresh process), bf16 autocast, fused vs foreach AdamW, TF32 (CUDA only), channels_last DVAE decoding;
cached stage-2 latents vs encoding on the fly are in bench_vae. On the CPU, an option that does not pay
shows a ratio >= 1: that is the honest result, not an error. `--quick` skips compiling (tens of seconds).
Run: python benchmarks/run.py fastpaths [--quick]
"""

import argparse
import time

import torch
from common import interleaved, machine, markdown_table, matmul_fn, ms, peak_memory_mb, rate, ratio, save

from d2it.registry import default_registry
from d2it_cli.engine.fastpaths import autocast, maybe_compile, to_channels_last

BUILD = """
import torch
from d2it.registry import default_registry
reg = default_registry()
att = reg.create("attention", "sdpa")
torch.manual_seed(0)
bb = reg.create("backbone", "dit-b", {{"depth": {depth}, "hidden_size": {width}, "num_heads": {heads}}},
                input_size={size}, in_channels=4, num_classes=1000, grains=2, attention=att)
model = reg.create("refiner", "window16", {{"depth": 1}}, backbone=bb, attention=att).train()
"""
STEP = """
model.set_grad_checkpointing({ckpt})
args = model.example_inputs({batch})
model(*args).square().mean().backward()
"""


def content_model(size: int, width: int, heads: int, depth: int):
    """A D²iT content transformer (depth + 1 RefineNet block) with random non-zero weights."""
    scope = {}
    exec(BUILD.format(size=size, width=width, heads=heads, depth=depth), scope)  # noqa: S102 (our own template)
    model = scope["model"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=g)
    return model


def run(quick: bool) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick` is a smoke run of well under 30 s."""
    size, batch, repeats = (8, 2, 3) if quick else (32, 4, 5)
    width, heads, depth = (64, 2, 1) if quick else (384, 6, 3)
    model = content_model(size, width, heads, depth)
    args = model.example_inputs(batch)
    mm, mm_macs = matmul_fn(512 if quick else 2048)
    rows, notes = {}, {}

    def train_step(m, ctx=None):
        m.zero_grad(set_to_none=True)
        with ctx or autocast("cpu", "fp32"):
            out = m(*args)
        out.float().square().mean().backward()

    # torch.compile: forward (no grad), compile time reported apart
    if quick:
        notes["torch.compile"] = "skipped in --quick (compiling takes tens of seconds)"
    else:
        compiled = maybe_compile(model.eval(), True)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(*args)
        notes["torch.compile"] = (
            f"first call (compiling) {time.perf_counter() - start:.1f} s; failed: {compiled.failed}"
        )
        with torch.no_grad():
            t = interleaved({"eager": lambda: model(*args), "compiled": lambda: compiled(*args)}, repeats=repeats)
        rows["torch.compile (inductor), forward"] = (t["compiled"], t["eager"])
        model.train()

    def ckpt_step():
        model.set_grad_checkpointing(True)
        train_step(model)
        model.set_grad_checkpointing(False)

    adam = {}
    for kind in ("foreach", "fused"):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        try:
            adam[kind] = torch.optim.AdamW(params, lr=1e-4, **{kind: True})
            adam[kind].step()
        except (RuntimeError, TypeError) as error:
            notes["fused AdamW"] = f"not available on this device: {error}"
            adam.pop(kind)
    vae = default_registry().create("vae", "dvae-kl", {"base_width": 16 if quick else 64, "norm_groups": 8},
                                    image_size=64 if quick else 128).eval()  # fmt: skip
    z = torch.randn(batch, 4, (64 if quick else 128) // 8, (64 if quick else 128) // 8)
    vae_cl = to_channels_last(default_registry().create("vae", "dvae-kl", {"base_width": 16 if quick else 64,
                              "norm_groups": 8}, image_size=64 if quick else 128).eval())  # fmt: skip
    vae_cl.load_state_dict(vae.state_dict())

    def decode(v):
        with torch.no_grad():
            v.decode(z)

    calls = {
        "matmul": mm,
        "fp32 step": lambda: train_step(model),
        "checkpointed step": ckpt_step,
        "bf16 autocast step": lambda: train_step(model, autocast("cpu", "bf16")),
        "decode NCHW": lambda: decode(vae),
        "decode channels_last": lambda: decode(vae_cl),
        **{f"AdamW {k}": (lambda o=o: o.step()) for k, o in adam.items()},
    }
    t = interleaved(calls, repeats=repeats)
    rows["gradient checkpointing, forward+backward"] = (t["checkpointed step"], t["fp32 step"])
    rows["bf16 autocast, forward+backward"] = (t["bf16 autocast step"], t["fp32 step"])
    rows["channels_last DVAE decode"] = (t["decode channels_last"], t["decode NCHW"])
    if len(adam) == 2:
        rows["fused AdamW step (vs foreach)"] = (t["AdamW fused"], t["AdamW foreach"])
    notes["TF32"] = "CUDA only (benchmarks/gpu_check.sh); no effect on the CPU"
    notes["cached latents"] = "see bench_vae: encoding share of an uncached stage-2 step"
    memory = {}
    if not quick:
        build = BUILD.format(size=size, width=width, heads=heads, depth=depth)
        for ckpt in (False, True):
            memory[str(ckpt)] = peak_memory_mb(STEP.format(ckpt=ckpt, batch=8), setup=build)
        notes["gradient checkpointing peak memory"] = (
            f"batch 8 training step in a fresh process: peak resident memory {memory['True']:.0f} MiB with vs "
            f"{memory['False']:.0f} MiB without (weights and interpreter included, import-time peak excluded)"
        )
    result = {
        "setup": machine(
            dtype="float32",
            batch=batch,
            latent=[4, size, size],
            width=width,
            depth=f"{depth}+1",
            repeats=repeats,
            quick=quick,
        ),  # fmt: skip
        "matmul": {**t["matmul"], "gmacs_per_s": rate(t["matmul"], mm_macs) / 1e9},
        "fast_paths": {
            name: {"candidate": a, "baseline": b, "speedup": {k: 1 / v for k, v in ratio(a, b).items()}}
            for name, (a, b) in rows.items()
        },
        "peak_memory_mb": memory,
        "notes": notes,
    }
    save("fastpaths", result, markdown(result), quick)
    return result


def markdown(result: dict) -> str:
    """The result as a Markdown table."""
    s = result["setup"]
    head = (
        f"CPU, {s['threads']} threads, D²iT width {s['width']} depth {s['depth']}, batch {s['batch']}, latent "
        f"{'x'.join(map(str, s['latent']))}, {s['repeats']} interleaved repeats; matmul "
        f"{result['matmul']['gmacs_per_s']:.1f} GMAC/s. Speed-up = baseline time / candidate time (> 1 pays)"
    )
    rows = [[name, ms(r["candidate"]), ms(r["baseline"]), f"{r['speedup']['median']:.2f}x; {r['speedup']['min']:.2f}x"]
            for name, r in result["fast_paths"].items()]  # fmt: skip
    table = markdown_table(["fast path", "with ms median (min–max)", "without ms", "speed-up (median; min)"], rows)
    notes = "\n".join(f"- {k}: {v}" for k, v in result["notes"].items())
    return f"{head}\n\n{table}\n\n{notes}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
