"""Sampler quality per step: each sampler's distance to a 1000-step reference, on the demo system and on Gaussian data.

Demo system: the CPU `d2it demo --quick` models on 32-pixel images with fewer steps (`DEMO_PLAN`,
trained here first, a few minutes; or `--system DIR` for an existing one). 8 images of the 4 classes,
classifier-free guidance 2.0 (the demo's), one seed, so every sampler starts from the same grain maps
and x_T. Reference: DPM-Solver++(2M) on all 1000 steps
of the schedule. Reported: latent RMSE (after the latent scale) and image PSNR (dB, images in [-1, 1])
against the reference, at 5/10/25/50/250 steps, with each sampler's default spacing, and the model
calls.
Gaussian case: data N(0.3, 0.5²) whose ε-prediction and probability-flow ODE are exact
(`d2it.testing.sampler`), so the distance is to the exact solution, not to a reference run.
Stochastic samplers (ddpm, dpmpp-2m-sde) do not approach the ODE solution; they are listed for scale.
Run: python benchmarks/run.py sampler_quality [--quick]   (or python benchmarks/bench_sampler_quality.py --system DIR)
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, markdown_table, save

from d2it.registry import default_registry
from d2it.testing.sampler import gaussian_flow_solution, gaussian_oracle
from d2it_sampling.diffusion import GaussianDiffusion
from d2it_sampling.schedules import linear_betas

SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m", "ddpm", "dpmpp-2m-sde")
STOCHASTIC = ("ddpm", "dpmpp-2m-sde")
STEPS = (5, 10, 25, 50, 250)
REFERENCE = ("dpmpp-2m", {"spacing": "uniform"}, 1000)


def model_calls(name: str, steps: int) -> int:
    """Model evaluations of `steps` steps (Heun: two per step but the last)."""
    return 2 * steps - 1 if name == "heun" else steps


def gaussian_case(step_counts) -> dict:
    """RMSE to the exact probability-flow solution on Gaussian data, per sampler and step count."""
    mean, std = 0.3, 0.5
    diffusion = GaussianDiffusion(linear_betas(), learn_sigma=False)
    ac = diffusion.alphas_cumprod
    model_fn = gaussian_oracle(mean, std, ac)
    x_start = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for name in SAMPLERS:
        sampler = default_registry().create("sampler", name)
        for steps in step_counts:
            kept = sampler.timesteps(diffusion, steps)
            g = torch.Generator().manual_seed(1)
            x = sampler.sample(model_fn, diffusion, x_start.shape, noise=x_start, steps=steps, generator=g,
                               progress=False)  # fmt: skip
            exact = gaussian_flow_solution(x_start, mean, std, float(ac[kept[-1]]), float(ac[kept[0]]))
            out[f"{name}@{steps}"] = float((x.double() - exact).pow(2).mean().sqrt())
    return out


# the CPU quick demo's models on 32-pixel images with fewer steps, so training takes minutes on a shared CPU;
# sampler accuracy (distance to the reference) needs a trained, non-trivial model, not a good one
DEMO_PLAN = ("image_size=32", "num_images=128", "dvae_steps=60", "grain_steps=40", "content_steps=200",
             "sample_num=4", "sample_steps=10")  # fmt: skip


def train_demo(workdir: Path) -> Path:
    """Train the CPU quick demo (with `DEMO_PLAN`) into `workdir` and return its system directory."""
    from d2it_cli.commands.demo import ClickRunner
    from d2it_cli.demo import run_demo
    from d2it_cli.main import load_registry, make_cli

    cli = ClickRunner(make_cli(load_registry()))
    run_demo(cli, workdir, device="cpu", quick=True, quiet=True, overrides=DEMO_PLAN, data="synthetic")
    return workdir / "system"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def demo_case(system_dir: Path, step_counts, num: int, cfg_scale: float, reference=REFERENCE) -> dict:
    """Latent RMSE and image PSNR to the reference, per sampler and step count, on a trained system."""
    from d2it import system as systems
    from d2it_sampling.pipeline import generate

    system = systems.load(system_dir).eval()
    classes = [i % system.record.num_classes for i in range(num)]

    def run(name, options, steps):
        return generate(system, classes, seed=0, steps=steps, sampler=name, sampler_options=options,
                        cfg_scale=cfg_scale, progress=False)  # fmt: skip

    name, options, steps = reference
    start = time.perf_counter()
    ref = run(name, options, steps)
    seconds = {"reference": time.perf_counter() - start}
    out = {}
    for name in SAMPLERS:
        for steps in step_counts:
            start = time.perf_counter()
            gen = run(name, {}, steps)
            seconds[f"{name}@{steps}"] = time.perf_counter() - start
            rmse = float((gen.latents - ref.latents).pow(2).mean().sqrt())
            out[f"{name}@{steps}"] = {"latent_rmse": rmse, "psnr_db": psnr(gen.images, ref.images)}
    return {"results": out, "seconds": seconds}


def table(gauss: dict, demo: dict | None, step_counts) -> str:
    """One row per sampler: demo PSNR and latent RMSE, Gaussian RMSE, at every step count."""
    headers = ["sampler", "spacing", "calls"] + [f"{n} steps" for n in step_counts]
    rows = []
    for name in SAMPLERS:
        spacing = default_registry().create("sampler", name).config.spacing
        label = f"{name} (stochastic)" if name in STOCHASTIC else name
        calls = "/".join(str(model_calls(name, n)) for n in step_counts)
        cells = []
        for n in step_counts:
            key = f"{name}@{n}"
            parts = []
            if demo is not None and key in demo["results"]:
                d = demo["results"][key]
                parts.append(f"{d['psnr_db']:.1f} dB, {d['latent_rmse']:.3f}")
            parts.append(f"G {gauss[key]:.1e}")
            cells.append("; ".join(parts))
        rows.append([label, spacing, calls, *cells])
    return markdown_table(headers, rows)


def run(quick: bool, system_dir=None, source=None) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick`: Gaussian case and a tiny untrained system."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    step_counts = (5, 10) if quick else STEPS
    gauss = gaussian_case(step_counts)
    demo = None
    with tempfile.TemporaryDirectory() as tmp:
        if system_dir is None and not quick:
            start = time.perf_counter()
            system_dir = train_demo(Path(tmp) / "demo")
            plan = " ".join(f"--plan {item}" for item in DEMO_PLAN)
            source = f"d2it demo --quick {plan} on the CPU, trained in {time.perf_counter() - start:.0f} s"
        elif system_dir is None:
            system_dir = tiny_system(Path(tmp) / "tiny")
            source = "a tiny untrained system (smoke run)"
        else:
            source = source or str(system_dir)
        reference = (*REFERENCE[:2], 100) if quick else REFERENCE
        demo = demo_case(Path(system_dir), step_counts, num=4 if quick else 8, cfg_scale=2.0, reference=reference)
    text = table(gauss, demo, step_counts)
    text = (f"Each cell: image PSNR to the reference and latent RMSE on the demo system ({source}); "
            f"G = RMSE to the exact ODE solution on Gaussian data. Reference: {reference[0]} on "
            f"{reference[2]} (all) steps.\n\n" + text)  # fmt: skip
    result = {
        "setup": machine(system=source, reference=list(reference), steps=list(step_counts)),
        "gaussian_rmse": gauss,
        "demo": demo,
        "calls": {f"{n}@{s}": model_calls(n, s) for n in SAMPLERS for s in step_counts},
    }
    save("sampler_quality", result, text, quick=quick)
    return result


def tiny_system(out: Path) -> Path:
    """A tiny random-weight D²iT system at 32 px (the smoke run's stand-in for the trained demo)."""
    from d2it import system as systems

    sets = {"vae": {"base_width": 8, "norm_groups": 4, "num_res_blocks": 1, "attn_levels": 0},
            "backbone": {"depth": 2, "hidden_size": 32, "num_heads": 2},
            "grain": {"depth": 1, "hidden_size": 32, "num_heads": 2}}  # fmt: skip
    record = systems.SystemRecord(vae="dvae-kl", backbone="dit-s", refine="window16", grain="dgt-s", image_size=32,
                                  num_classes=4, options=sets)  # fmt: skip
    torch.manual_seed(0)
    systems.save(systems.build(record), out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--system", default=None, help="a trained system directory (default: train the quick demo)")
    parser.add_argument("--source", default=None, help="how that system was made (for the table)")
    args = parser.parse_args()
    sys.exit(0 if run(args.quick, args.system, args.source) else 1)
