"""CPU fp32 speed of the Dynamic VAE against the LDM KL-f8 baseline of equal base width, and the share of
a stage-2 training step that encoding would take without the latent cache.

Encode = grain map + posterior parameters + latent (what `d2it encode` caches); decode = latent -> image.
Repeats are interleaved across models so machine-load drift hits all alike. Prints a Markdown table and
writes benchmarks/results/vae.json (`--quick`: a < 30 s smoke run at 64 px, written to vae-quick.json).
Run: python benchmarks/bench_vae.py [--quick]
"""

import argparse

import torch
from common import interleaved, machine, markdown_table, matmul_fn, ms, rate, ratio, save

from d2it.errors import D2itError
from d2it.registry import default_registry


def _per_image(stats: dict, batch: int) -> dict:
    return {**stats, "images_per_s": batch / stats["median"]}


def build_vaes(image_size: int, width: int, groups: int) -> dict:
    """`dvae-kl` and `vae-f8` with the same base width (everything else at its default)."""
    reg = default_registry()
    opts = {"base_width": width, "norm_groups": groups}
    torch.manual_seed(0)
    return {name: reg.create("vae", name, opts, image_size=image_size).eval() for name in ("dvae-kl", "vae-f8")}


def time_vaes(vaes: dict, images: torch.Tensor, repeats: int, matmul) -> dict:
    """Encode and decode times per model and the matmul, interleaved, after one warm-up each."""

    def encode(vae):
        with torch.no_grad():
            gm = vae.grain_map(images)
            return vae.sample_latent(vae.encode(images, gm), gm, mode=True)

    latents = {name: encode(vae) for name, vae in vaes.items()}
    calls = {"matmul": matmul}
    for name, vae in vaes.items():
        calls[f"{name} encode"] = lambda v=vae: encode(v)
        calls[f"{name} decode"] = lambda v=vae, z=latents[name]: v.decode(z)
    with torch.no_grad():
        times = interleaved(calls, repeats=repeats)
    b = images.shape[0]
    out = {name: {m: _per_image(times[f"{name} {m}"], b) for m in ("encode", "decode")} for name in vaes}
    return out, times["matmul"]


def stage2_step(input_size: int, batch: int, repeats: int, overrides: dict) -> dict | None:
    """Median time of one D²iT-B training step (forward, MSE, backward, AdamW) on cached latents; None if absent."""
    reg = default_registry()
    try:
        attention = reg.create("attention", "sdpa")
        torch.manual_seed(0)
        backbone = reg.create(
            "backbone",
            "dit-b",
            overrides,
            input_size=input_size,
            in_channels=4,
            num_classes=1000,
            grains=2,
            attention=attention,
        )
        model = reg.create("refiner", "window16", {}, backbone=backbone, attention=attention).train()
    except D2itError:
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, input_size, input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    gm = torch.randint(0, 2, (batch, input_size // 2, input_size // 2), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, t, y, gm).square().mean().backward()
        opt.step()

    times = interleaved({"step": step}, repeats=repeats)["step"]
    params = sum(p.numel() for p in model.parameters())
    return {**_per_image(times, batch), "params_m": params / 1e6, "options": overrides or "default"}


def run(quick: bool) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick` is a smoke run of well under 30 s."""
    image_size, width, groups, batch, repeats = (64, 16, 8, 1, 2) if quick else (256, 128, 32, 2, 3)
    vaes = build_vaes(image_size, width, groups)
    images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mm, mm_macs = matmul_fn(512 if quick else 2048)
    times, mm_stats = time_vaes(vaes, images, repeats, mm)
    ratios = {
        f"{mode}_time_dvae_over_f8": ratio(times["dvae-kl"][mode], times["vae-f8"][mode])
        for mode in ("encode", "decode")
    }
    tiny = {"depth": 2, "hidden_size": 192, "num_heads": 3}  # quick: a small D²iT, full: D²iT-B (10 + 2)
    step = stage2_step(image_size // 8, batch, repeats, tiny if quick else {})
    share = None
    if step is not None:
        enc = times["dvae-kl"]["encode"]["median"]
        share = {"encode_s": enc, "step_s": step["median"], "share_of_step": enc / (enc + step["median"])}
    result = {
        "setup": machine(
            dtype="float32", image_size=image_size, base_width=width, batch=batch, repeats=repeats, quick=quick
        ),  # fmt: skip
        "matmul": {**mm_stats, "gmacs_per_s": rate(mm_stats, mm_macs) / 1e9},
        "params_m": {name: sum(p.numel() for p in v.parameters()) / 1e6 for name, v in vaes.items()},
        "vaes": times,
        "ratios": ratios,
        "stage2_step": step,
        "encoding_share": share,
    }
    save("vae", result, markdown(result), quick)
    return result


def markdown(result: dict) -> str:
    """The result as Markdown tables."""
    s = result["setup"]
    lines = [
        f"CPU fp32, {s['threads']} threads, {s['image_size']}x{s['image_size']} images, batch {s['batch']}, "
        f"base width {s['base_width']}, {s['repeats']} interleaved repeats; matmul rate "
        f"{result['matmul']['gmacs_per_s']:.1f} GMAC/s measured in the same run",
        "",
    ]
    rows = []
    for name, row in result["vaes"].items():
        for mode in ("encode", "decode"):
            r = row[mode]
            rel = ratio(r, result["vaes"]["vae-f8"][mode])
            rows.append([name, f"{result['params_m'][name]:.1f}", mode, f"{r['images_per_s']:.2f}", ms(r),
                         f"{rel['median']:.3f}; {rel['min']:.3f}"])  # fmt: skip
    lines.append(
        markdown_table(
            ["model", "params M", "mode", "images/s", "ms median (min–max)", "time / vae-f8 (median; min)"], rows
        )
    )
    share = result["encoding_share"]
    lines.append("")
    if share is None:
        lines.append("stage-2 share: skipped (no `dit-b` backbone / `window16` refiner installed)")
    else:
        step = result["stage2_step"]
        lines.append(
            f"cached stage-2 latents vs encoding on the fly: a D²iT-B step ({step['params_m']:.0f}M params, options "
            f"{step['options']}) takes {1e3 * share['step_s']:.0f} ms per batch on cached latents; encoding that batch "
            f"takes {1e3 * share['encode_s']:.0f} ms = {100 * share['share_of_step']:.0f}% of an uncached step "
            f"(cache speed-up {1 / (1 - share['share_of_step']):.2f}x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
