"""One-go GPU check: attention backends agree, bf16 training and sampling speed of D²iT-XL vs DiT-XL/2.

Reports, as JSON under $OUT (or ./gpu-results): xformers vs sdpa vs math (xformers reported missing when
not importable), the sparse RefineNet's packed attention on the xformers path vs the padded path, a bf16
training step (forward, backward, fused AdamW) of D²iT-XL (dense and sparse RefineNet) and DiT-XL/2 at
batch 32 with images/s, model FLOP utilisation against a bf16 matmul measured in the same run and peak
memory, sampling images/s, and host syncs in the DDPM loop. Targets: D²iT-XL training >= 40% of the bf16
matmul rate; D²iT-XL step / DiT-XL/2 step <= 1.1x their GMAC ratio. `--dry-run`: tiny sizes on the CPU.
Run: bash benchmarks/gpu_check.sh [--dry-run]
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_fn, rate  # noqa: E402

from d2it.attention import math_attention, sdpa_attention, xformers_attention, xformers_available  # noqa: E402
from d2it.counting import count  # noqa: E402
from d2it.registry import default_registry  # noqa: E402
from d2it.system import SystemRecord  # noqa: E402
from d2it_cli.engine.fastpaths import autocast, configure_tf32, make_adamw  # noqa: E402
from d2it_sampling.guidance import conditioned_model  # noqa: E402
from d2it_sampling.pipeline import make_diffusion  # noqa: E402
from d2it_sampling.samplers import sample_ddpm  # noqa: E402


def check_attention(device, dtype) -> dict:
    """Max abs difference of each backend from the fp32 math reference, with and without a key mask."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, generator=g).to(device) for _ in range(3))
    mask = (torch.rand(2, 1, 1, 256, generator=g) > 0.3).to(device)
    out = {"dtype": str(dtype).removeprefix("torch."), "xformers": "available" if xformers_available() else "missing"}
    backends = {"sdpa": sdpa_attention, "math": math_attention}
    if xformers_available() and device.type == "cuda" and dtype != torch.float32:
        backends["xformers"] = xformers_attention
    for m_name, m in (("no mask", None), ("key mask", mask)):
        ref = math_attention(q, k, v, m)
        for name, fn in backends.items():
            got = fn(q.to(dtype), k.to(dtype), v.to(dtype), m).float()
            out[f"{name}, {m_name}"] = float((got - ref).abs().max())
    tol = 2e-2 if dtype != torch.float32 else 1e-5
    out["ok"] = all(v <= tol for key, v in out.items() if "," in key)
    out["tolerance"] = tol
    return out


def check_sparse_attention(device, dtype) -> dict:
    """The sparse RefineNet's packed attention: the xformers BlockDiagonalMask path vs padded windows."""
    from d2it_transformers import sparse

    model = sparse.SparseRefineNet(32, 4, 8, 2, 64, 4, 1, 16).to(device)
    gm = (torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5).long().to(device)
    layout = model.layout(gm)
    qkv = torch.randn(sum(layout.seqlens), 3, 4, 16, device=device, dtype=dtype)
    padded = sparse.packed_attention(sdpa_attention, qkv, layout).float()
    out = {"tokens": int(qkv.shape[0]), "windows": len(layout.seqlens)}
    if sparse._XFORMERS and device.type == "cuda" and dtype != torch.float32:
        blockdiag = sparse.packed_attention(xformers_attention, qkv, layout).float()
        out["xformers_vs_padded_max_abs"] = float((blockdiag - padded).abs().max())
        out["ok"] = out["xformers_vs_padded_max_abs"] < 2e-2
    else:
        out["xformers_vs_padded_max_abs"] = "xformers path not available here"
    return out


def build(name: str, sizes: dict, device):
    """DiT-XL/2 or D²iT-XL (dense or sparse RefineNet) with random non-zero weights."""
    reg = default_registry()
    att = reg.create("attention", "auto")
    ctx = dict(input_size=sizes["latent"], in_channels=4, num_classes=1000, attention=att)
    opts = sizes["options"]
    torch.manual_seed(0)
    with torch.device(device):
        if name == "DiT-XL/2":
            model = reg.create("backbone", "dit-xl", opts, grains=None, **ctx)
        else:
            bb = reg.create("backbone", "dit-xl", {**opts, "depth": sizes["routed_depth"]}, grains=2, **ctx)
            refine = "window16-sparse" if "sparse" in name else "window16"
            model = reg.create("refiner", refine, {"depth": sizes["refine_depth"]}, backbone=bb, attention=att)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
    return model


def train_check(names, sizes, device, precision, repeats) -> dict:
    """Training step (bf16 autocast, fused AdamW) times, images/s, MFU and peak memory per model."""
    out = {}
    batch = sizes["batch"]
    for name in names:
        model = build(name, sizes, device).train()
        x, t, y, gm = _inputs(model, batch, device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            gmacs = count(model.eval(), *_inputs(model, 1, device)[:3], *([gm[:1]] if model.grains else [])).macs / 1e9
        model.train()
        opt = make_adamw(model.parameters(), lr=1e-4, weight_decay=0.0)
        extra = (gm,) if model.grains else ()

        def step(model=model, opt=opt, args=(x, t, y, *extra)):
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = model(*args).float().square().mean()
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = interleaved({"step": step}, repeats=repeats, warmup=min(repeats, 2), device=device)["step"]
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        out[name] = {"gmacs_per_image": gmacs, "step": times, "images_per_s": batch / times["median"],
                     "peak_memory_mib": peak}  # fmt: skip
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _inputs(model, batch, device):
    g = torch.Generator().manual_seed(0)
    size = model.input_size
    x = torch.randn(batch, 4, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    gm = (torch.rand(batch, size // 2, size // 2, generator=g) < 0.5).long().to(device)
    return x, t, y, gm


def sample_check(names, sizes, device, precision, steps, repeats) -> dict:
    """DDPM sampling with batched guidance: images/s and host syncs per step (CUDA sync debug mode)."""
    out = {}
    batch = sizes["batch"]
    diffusion = make_diffusion(SystemRecord(backbone="dit-xl", refine="window16"), steps)
    for name in names:
        model = build(name, sizes, device).eval()
        x, _, y, gm = _inputs(model, batch, device)
        gm = gm if model.grains else None
        fn = conditioned_model(model, y, gm, cfg_scale=1.5)

        def sample(fn=fn, gm=gm, x=x):
            with autocast(device, precision):
                return sample_ddpm(fn, diffusion, x, grain_map=gm, progress=False)

        times = interleaved({"sample": sample}, repeats=min(repeats, 2), warmup=1, device=device)["sample"]
        syncs = None
        if device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    sample()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught) / steps
        out[name] = {"sample": times, "images_per_s": batch / times["median"], "host_syncs_per_step": syncs}
        del model
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (a test of this script)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-results", help="result folder")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    precision = "bf16" if cuda else "fp32"
    half = torch.bfloat16 if cuda else torch.float32
    if args.dry_run:
        sizes = {"latent": 8, "batch": 2, "routed_depth": 1, "refine_depth": 1,
                 "options": {"depth": 2, "hidden_size": 64, "num_heads": 2}}  # fmt: skip
        repeats, steps, mm_n = 1, 1, 256
    else:
        sizes = {"latent": 32, "batch": 32, "routed_depth": 22, "refine_depth": 6, "options": {}}
        repeats, steps, mm_n = 5, 10, 8192
    if cuda:
        configure_tf32(True)
    start = time.perf_counter()
    result = {"setup": machine(device, dry_run=args.dry_run, precision=precision, **sizes)}
    result["attention"] = check_attention(device, half)
    result["sparse_attention"] = check_sparse_attention(device, half)
    mm, macs = matmul_fn(mm_n, dtype=half, device=device)
    mm_rate = rate(interleaved({"mm": mm}, repeats=2 * repeats, warmup=3, device=device)["mm"], macs)
    result["matmul"] = {"n": mm_n, "dtype": str(half).removeprefix("torch."), "gmacs_per_s": mm_rate / 1e9}
    names = ["D²iT-XL", "D²iT-XL sparse", "DiT-XL/2"]
    train = train_check(names, sizes, device, precision, repeats)
    for row in train.values():
        row["mfu"] = 3 * row["gmacs_per_image"] * 1e9 * sizes["batch"] / row["step"]["min"] / mm_rate
    result["train"] = train
    result["sample"] = sample_check(names, sizes, device, precision, steps, repeats)
    d2, dit = train["D²iT-XL"], train["DiT-XL/2"]
    gmac_ratio = d2["gmacs_per_image"] / dit["gmacs_per_image"]
    step_ratio = d2["step"]["median"] / dit["step"]["median"]
    result["targets"] = {
        "d2it_xl_mfu >= 0.40": {"value": d2["mfu"], "met": d2["mfu"] >= 0.40},
        "d2it_xl_step / dit_xl2_step <= 1.1 * gmac_ratio": {
            "step_ratio": step_ratio, "gmac_ratio": gmac_ratio, "met": step_ratio <= 1.1 * gmac_ratio},
    }  # fmt: skip
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu-check-dry-run.json" if args.dry_run else "gpu-check.json")
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"targets": result["targets"], "attention_ok": result["attention"]["ok"],
                      "seconds": round(result["seconds"], 1)}, indent=2, default=str))  # fmt: skip
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
