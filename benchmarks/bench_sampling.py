"""Sampling speed on the CPU: images/s of D²iT-B (dense and sparse RefineNet) vs DiT-B/2 at equal settings.

Equal settings: reduced depth (4 blocks; D²iT 3 + 1 RefineNet), width 768, 32x32x4 latents, DDPM with
`steps` respaced steps, classifier-free guidance 1.5 as one batched forward of 2B per step. Also the cost
of guidance as one batched forward vs two forwards (cond and uncond) per step. Grain maps: half fine.
Run: python benchmarks/run.py sampling [--quick]
"""

import argparse

import torch
from common import interleaved, machine, markdown_table, matmul_fn, ms, rate, ratio, save

from d2it.registry import default_registry
from d2it.system import SystemRecord
from d2it_sampling.guidance import conditioned_model
from d2it_sampling.pipeline import make_diffusion
from d2it_sampling.samplers import sample_ddpm


def build(input_size: int, width: dict, depth: int) -> dict:
    """DiT-B/2 (depth) and D²iT-B (depth - 1 + 1 RefineNet window16, dense and sparse) with random weights."""
    reg = default_registry()
    att = reg.create("attention", "sdpa")
    ctx = dict(input_size=input_size, in_channels=4, num_classes=1000, attention=att)
    torch.manual_seed(0)
    models = {"DiT-B/2": reg.create("backbone", "dit-b", {**width, "depth": depth}, grains=None, **ctx)}
    for name, refine in (("D²iT-B", "window16"), ("D²iT-B sparse", "window16-sparse")):
        bb = reg.create("backbone", "dit-b", {**width, "depth": depth - 1}, grains=2, **ctx)
        models[name] = reg.create("refiner", refine, {"depth": 1}, backbone=bb, attention=att)
    models["D²iT-B sparse"].load_state_dict(models["D²iT-B"].state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in models.values():
            for p in model.parameters():  # non-zero weights: a trained model's work, not adaLN-Zero's shortcuts
                p.normal_(0, 0.02, generator=g)
    return {name: m.eval() for name, m in models.items()}


def two_forward_guidance(model, y, grain_map, cfg_scale):
    """The unbatched baseline: one conditional and one unconditional forward per step."""
    null = torch.full_like(y, model.num_classes)

    def model_fn(x, t):
        cond = model(x, t, y, grain_map) if grain_map is not None else model(x, t, y)
        uncond = model(x, t, null, grain_map) if grain_map is not None else model(x, t, null)
        c = x.shape[1]
        return torch.cat([uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], 1)

    return model_fn


def run(quick: bool) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick` is a smoke run of well under 30 s."""
    size, batch, steps, repeats = (8, 2, 3, 2) if quick else (32, 2, 5, 3)
    width = {"hidden_size": 192, "num_heads": 3} if quick else {"hidden_size": 768, "num_heads": 12}
    depth, cfg = (2, 1.5) if quick else (4, 1.5)
    models = build(size, width, depth)
    diffusion = make_diffusion(SystemRecord(backbone="dit-b", refine="window16"), steps)
    y = torch.arange(batch) % 1000
    g = torch.Generator().manual_seed(0)
    grain_map = (torch.rand(batch, size // 2, size // 2, generator=g) < 0.5).long()
    noise = torch.randn(batch, 4, size, size, generator=g)

    def sample(model, guided=conditioned_model):
        gm = grain_map if model.grains else None
        fn = guided(model, y, gm, cfg_scale=cfg)
        return sample_ddpm(fn, diffusion, noise, grain_map=gm, generator=torch.Generator().manual_seed(1),
                           progress=False)  # fmt: skip

    mm, mm_macs = matmul_fn(512 if quick else 2048)
    calls = {"matmul": mm, **{name: (lambda m=m: sample(m)) for name, m in models.items()}}
    calls["D²iT-B two forwards"] = lambda: sample(models["D²iT-B"], _unbatched)
    times = interleaved(calls, repeats=repeats, warmup=1)
    rows = {}
    for name in (*models, "D²iT-B two forwards"):
        t = times[name]
        rows[name] = {**t, "images_per_s": batch / t["median"], "time_ratio_vs_dit_b2": ratio(t, times["DiT-B/2"])}
    result = {
        "setup": machine(
            dtype="float32",
            batch=batch,
            latent=[4, size, size],
            width=width["hidden_size"],
            depth=depth,
            d2it_split=f"{depth - 1}+1",
            sampler="ddpm",
            steps=steps,
            cfg_scale=cfg,
            fine_ratio=float(grain_map.float().mean()),
            repeats=repeats,
            quick=quick,
        ),  # fmt: skip
        "matmul": {**times["matmul"], "gmacs_per_s": rate(times["matmul"], mm_macs) / 1e9},
        "sampling": rows,
        "guidance_batched_over_two_forwards": ratio(times["D²iT-B"], times["D²iT-B two forwards"]),
        "host_syncs_per_step": "none in the DDPM loop (timesteps built once, noise drawn on the device); the sparse "
        "RefineNet reads its window lengths once per forward",
    }
    save("sampling", result, markdown(result), quick)
    return result


def _unbatched(model, y, grain_map, cfg_scale):
    return two_forward_guidance(model, y, grain_map, cfg_scale)


def markdown(result: dict) -> str:
    """The result as a Markdown table."""
    s = result["setup"]
    head = (
        f"CPU fp32, {s['threads']} threads, batch {s['batch']}, latent {'x'.join(map(str, s['latent']))}, width "
        f"{s['width']}, depth {s['depth']} (D²iT {s['d2it_split']}, window16), DDPM {s['steps']} steps, guidance "
        f"{s['cfg_scale']} (one batched forward per step), fine ratio {s['fine_ratio']:.2f}, {s['repeats']} "
        f"interleaved repeats; matmul {result['matmul']['gmacs_per_s']:.1f} GMAC/s"
    )
    rows = [[name, f"{r['images_per_s']:.3f}", ms(r),
             f"{r['time_ratio_vs_dit_b2']['median']:.3f}; {r['time_ratio_vs_dit_b2']['min']:.3f}"]
            for name, r in result["sampling"].items()]  # fmt: skip
    table = markdown_table(["model", "images/s", "ms per batch median (min–max)", "time / DiT-B/2 (median; min)"], rows)
    g = result["guidance_batched_over_two_forwards"]
    return (
        f"{head}\n\n{table}\n\nguidance as one batched forward / two forwards: {g['median']:.3f} (median), "
        f"{g['min']:.3f} (min)\n\nhost syncs: {result['host_syncs_per_step']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
