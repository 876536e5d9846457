"""GPU parity: an imported DiT-XL/2 system (random weights) against diffusers' DiTPipeline, in fp32 and bf16.

A random DiT-XL/2 is written as DiT publishes it (a raw state dict, `torch.save`) and a random
full-size SD VAE as a diffusers folder; `d2it import dit` turns both into a system. The same weights
go into diffusers' `DiTTransformer2DModel` (timestep frequencies set to DiT's, see
`d2it_cli.interop.dit.dit_to_diffusers`) and `AutoencoderKL`, run by `DiTPipeline` with
`DDPMScheduler` (DiT's respacing: timestep_spacing="linspace"; no clipping). The pipeline guides all four
channels, drops the learned variance and uses the fixed-small variance, so our side is run the same way
(guidance.channels=all, a fixed-small diffusion); every noise draw of the pipeline is replayed into ours.
fp32 runs both in float32 with TF32 off; bf16 runs diffusers in bf16 weights and ours under bf16
autocast (the training engine's mode), so its differences are bf16 rounding, not a mismatch.

Prints a table (per dtype: max |difference| of one transformer forward, absolute and over the output's
std; max and mean |difference| of the decoded images in [0, 1]; `ok` against LIMITS) and one
JSON line; writes $OUT/gpu_parity.json when OUT is set. `--dry-run`: tiny sizes on the CPU.
Needs torch and diffusers (not lpips or torch-fidelity); our packages from an install or PYTHONPATH:
  PYTHONPATH=$(ls -d packages/*/src | tr '\\n' :) python benchmarks/gpu_parity.py
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from d2it.registry import Registry, default_registry, use_registry
from d2it.system import load
from d2it_cli.interop.dit import dit_to_diffusers, import_dit
from d2it_sampling import diffusion as diffusion_module
from d2it_sampling.diffusion import GaussianDiffusion
from d2it_sampling.guidance import conditioned_model

FULL = {"hidden": 1152, "heads": 16, "depth": 28, "latent": 32, "vae_widths": (128, 256, 512, 512), "blocks": 2}
TINY = {"hidden": 64, "heads": 2, "depth": 2, "latent": 8, "vae_widths": (32, 32, 32, 32), "blocks": 1}
# what a run may differ by (forward_rel = max |d| / std of diffusers' output; images in [0, 1]). fp32 is the
# parity check: both sides agree to float rounding. bf16 compares pure-bf16 weights with fp32 weights under
# autocast, so it reports bf16's rounding over 28 blocks and the steps; its limits only catch gross mismatches
LIMITS = {
    "float32": {"forward_rel": 1e-4, "images_max": 1e-3},
    "bfloat16": {"forward_rel": 0.3, "images_mean": 0.03},
}


def registry() -> Registry:
    """The installed registry, or (sources on PYTHONPATH, no entry points) one with our built-ins registered."""
    reg = default_registry()
    if "dit-xl" in reg.names("backbone"):
        return reg
    import d2it.plugin
    import d2it_sampling.plugin
    import d2it_transformers.plugin
    import d2it_vae.plugin

    reg = Registry()
    for module in (d2it.plugin, d2it_vae.plugin, d2it_transformers.plugin, d2it_sampling.plugin):
        reg.register(module, module.__name__, dist=module.__name__.split(".")[0], version="source")
    return reg


def randomise(module, seed: int, std: float = 0.02):
    """Random weights everywhere (DiT zero-initialises its modulation and output layers); norm scales near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    return module


def write_inputs(folder: Path, size: dict, reg: Registry):
    """A random official-layout DiT checkpoint and a random diffusers SD-VAE folder; their paths."""
    import diffusers

    torch.manual_seed(0)
    dit = reg.create(
        "backbone", "dit-xl",
        {"depth": size["depth"], "hidden_size": size["hidden"], "num_heads": size["heads"]},
        input_size=size["latent"], in_channels=4, num_classes=1000, grains=None, attention=None,
    )  # fmt: skip
    ckpt = folder / "DiT-random.pt"
    torch.save(randomise(dit, seed=1).state_dict(), ckpt)
    n = len(size["vae_widths"])
    vae = diffusers.AutoencoderKL(
        block_out_channels=size["vae_widths"], layers_per_block=size["blocks"], latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=size["latent"] * 8, scaling_factor=0.18215,
    )  # fmt: skip
    randomise(vae, seed=2).save_pretrained(folder / "sd-vae", safe_serialization=True)
    return ckpt, folder / "sd-vae"


def diffusers_pipeline(ckpt: Path, vae_folder: Path, size: dict, dtype, device):
    import diffusers

    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=size["heads"], attention_head_dim=size["hidden"] // size["heads"], in_channels=4,
        out_channels=8, num_layers=size["depth"], sample_size=size["latent"], patch_size=2,
        num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    transformer.load_state_dict(dit_to_diffusers(torch.load(ckpt, weights_only=True)), strict=False)
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT's frequencies (diffusers' DiT uses 1)
    vae = diffusers.AutoencoderKL.from_pretrained(vae_folder)
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        clip_sample=False, timestep_spacing="linspace",
    )  # fmt: skip
    pipe = diffusers.DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)
    return pipe.to(device=device, dtype=dtype)


def compare(system, pipe, dtype, device, labels, steps: int, cfg_scale: float) -> dict:
    """Max |difference| of one transformer forward and of the decoded images, diffusers vs ours."""
    import diffusers.pipelines.dit.pipeline_dit as pipeline_module
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    y = torch.tensor(labels, device=device)
    b, latent = len(labels), system.content.input_size
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, 4, latent, latent, generator=g).to(device)
    t = torch.linspace(0, 999, b).long().to(device)
    with torch.no_grad(), autocast:
        ours = system.content(x, t, y).float()
    with torch.no_grad():
        theirs = pipe.transformer(x.to(dtype), timestep=t, class_labels=y).sample.float()
    forward = (ours - theirs).abs().max().item()
    forward_rel = forward / theirs.std().item()

    draws = []
    originals = (pipeline_module.randn_tensor, ddpm_module.randn_tensor)

    def recording(*args, **kwargs):
        draws.append(originals[1](*args, **kwargs))
        return draws[-1]

    pipeline_module.randn_tensor = ddpm_module.randn_tensor = recording
    try:
        with torch.no_grad():
            images = pipe(labels, guidance_scale=cfg_scale, generator=torch.Generator().manual_seed(7),
                          num_inference_steps=steps, output_type="pt").images.float()  # fmt: skip
    finally:
        pipeline_module.randn_tensor, ddpm_module.randn_tensor = originals
    x_T, step_noise = draws[0].float(), iter([d[:b].float() for d in draws[1:]])
    replay = diffusion_module.gaussian_noise
    diffusion_module.gaussian_noise = lambda shape, **kwargs: next(step_noise)
    try:
        # the pipeline's process: DiT's respaced steps, fixed-small variance (it drops the learned one)
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        spaced = GaussianDiffusion(betas, learn_sigma=False, sigma_small=True).respace(steps)
        guided = conditioned_model(system.content, y, cfg_scale=cfg_scale, channels="all")
        sampler = system_sampler(steps)
        with torch.no_grad(), autocast:
            z = sampler.run(lambda xx, tt: guided(xx, tt)[:, :4].float(), spaced, x_T, progress=False)
            decoded = system.vae.decode(z / system.latent_scale).float()
    finally:
        diffusion_module.gaussian_noise = replay
    diff = ((decoded / 2 + 0.5).clamp(0, 1) - images).abs()
    return {"forward": forward, "forward_rel": forward_rel, "images_max": diff.max().item(),
            "images_mean": diff.mean().item()}  # fmt: skip


def system_sampler(steps: int):
    return default_registry().create("sampler", "ddpm", {"steps": steps})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes on the CPU (a test of this script).")
    parser.add_argument("--steps", type=int, default=10, help="DDPM steps (DiT's respacing).")
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    size = TINY if args.dry_run else FULL
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    labels = [207, 360, 387, 974, 88, 979, 417, 279][: args.batch]
    reg = registry()
    results, start = {}, time.perf_counter()
    with use_registry(reg), tempfile.TemporaryDirectory() as tmp:
        ckpt, vae_folder = write_inputs(Path(tmp), size, reg)
        import_dit(ckpt, Path(tmp) / "system", vae=vae_folder, num_heads=size["heads"], registry=reg)
        system = load(Path(tmp) / "system", reg).to(device).eval()  # float32 weights; bf16 runs under autocast
        pipe = diffusers_pipeline(ckpt, vae_folder, size, torch.float32, device)
        for dtype in (torch.float32, torch.bfloat16):  # fp32 first: the bf16 cast of diffusers' weights is lossy
            pipe = pipe.to(dtype=dtype)
            name = str(dtype).removeprefix("torch.")
            results[name] = compare(system, pipe, dtype, device, labels, args.steps, args.cfg_scale)
            results[name]["ok"] = all(results[name][k] <= limit for k, limit in LIMITS[name].items())
    doc = {
        "gpu_parity": results,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": "DiT-XL/2" if not args.dry_run else "tiny",
        "steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "batch": len(labels),
        "limits": LIMITS,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    print(f"{'dtype':<10} {'forward max|d|':>15} {'(/ std)':>10} {'images max|d|':>14} {'mean|d|':>10}  ok")
    for name, r in results.items():
        print(
            f"{name:<10} {r['forward']:>15.3e} {r['forward_rel']:>10.2e} {r['images_max']:>14.3e} "
            f"{r['images_mean']:>10.2e}  {r['ok']}"
        )
    print(json.dumps(doc))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "gpu_parity.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    doc = main()
    sys.exit(0 if all(r["ok"] for r in doc["gpu_parity"].values()) else 1)
