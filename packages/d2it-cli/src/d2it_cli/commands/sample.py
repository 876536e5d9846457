"""`d2it sample`: generate images from a trained system into PNGs, a grain-map grid and optionally samples.npz."""

import json
import math
import shutil
from pathlib import Path

import click
import numpy as np

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import atomic_write_text
from d2it_cli import generation, outputs
from d2it_cli import images as imgs
from d2it_cli.commands.params import DEVICE, NON_NEGATIVE_FLOAT, SEED
from d2it_cli.commands.system_dir import SYSTEM_DIR
from d2it_cli.engine import dist

GRID_NAME = "grid.png"
SAMPLE_DIR = "samples"
GRID_LIMIT = 64  # samples shown in the grid


def grid_with_grains(arr: np.ndarray, grain_maps: np.ndarray | None, grains: int, limit: int = GRID_LIMIT):
    """A grid of (sample | sample with grain-map overlay) tiles, small images enlarged to at least 64 px."""
    arr = arr[:limit]
    scale = max(1, math.ceil(64 / max(1, arr.shape[1])))
    big = imgs.upscale(arr, scale)
    if grain_maps is None:
        return imgs.make_grid(big)
    overlay = imgs.grain_overlay(big, grain_maps[:limit].astype(np.int64), grains=grains)
    tiles = np.stack([imgs.hstack([a, b], gap=1) for a, b in zip(big, overlay)])
    return imgs.make_grid(tiles, nrow=max(1, math.ceil(math.sqrt(len(tiles) / 2))), padding=4)


def write_outputs(arrays: dict, out: Path, grains: int) -> dict:
    """Write one PNG per sample and the grid, replacing exactly the files of an earlier run; returns a summary."""
    sample_dir = out / SAMPLE_DIR
    outputs.remove_recorded(out)  # only files we listed: never a user's, never a stale samples.npz
    sample_dir.mkdir(parents=True, exist_ok=True)
    images, labels = arrays["arr_0"], arrays["labels"]
    written = []
    for i, (image, label) in enumerate(zip(images, labels)):
        written.append(sample_dir / f"{i:06d}_class{int(label)}.png")
        imgs.save_png(image, written[-1])
        if i % 256 == 255:  # keep the list current, so a killed run still cleans up on the next
            outputs.record(out, written, command="sample")
    grid = grid_with_grains(images, arrays.get("grain_maps"), grains)
    imgs.save_png(grid, out / GRID_NAME)
    outputs.record(out, [*written, out / GRID_NAME], command="sample")
    summary = {"num": int(len(images)), "samples": str(sample_dir), "grid": str(out / GRID_NAME)}
    if "grain_maps" in arrays and len(arrays["grain_maps"]):
        summary["fine_ratio"] = round(float((arrays["grain_maps"] > 0).mean()), 4)
    return summary


@click.command()
@click.option("--system", "system_dir", required=True, type=SYSTEM_DIR,
              help="Trained model directory.")
@click.option("--num", default=16, show_default=True, type=click.IntRange(min=1), help="Number of samples.")
@click.option("--class", "class_list", default=None, metavar="I,J,...", help="Class indices, cycled over the samples.")
@click.option("--classes-uniform", is_flag=True,
              help="Spread the samples evenly over all classes (default: random classes).")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Sampling steps (default: the sampler's `steps` option, e.g. ddpm 250, dpmpp-2m 25).")
@click.option("--sampler", default=None, help="Sampler component (default: the system's).")
@click.option("--set", "sets", multiple=True, metavar="sampler.OPTION=VALUE",
              help="Override a sampler option, e.g. --set sampler.spacing=karras.")
@click.option("--cfg-scale", default=1.5, show_default=True, type=NON_NEGATIVE_FLOAT,
              help="Classifier-free guidance scale (1 = off).")
@click.option("--grain-cfg-scale", default=1.0, show_default=True, type=NON_NEGATIVE_FLOAT,
              help="Guidance scale of the grain predictor.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Samples per batch (and per shard).")
@click.option("--device", default=None, type=DEVICE, help="Device (default: CUDA when available).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--npz", is_flag=True,
              help="Also write samples.npz (arr_0 uint8 NHWC, as the ADM evaluation suite reads).")
@click.option("--no-resume", is_flag=True, help="Discard finished shards from an earlier run instead of reusing them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_obj
def sample(obj, system_dir, num, class_list, classes_uniform, steps, sampler, sets, cfg_scale, grain_cfg_scale, seed,
           batch, device, out, npz, no_resume, as_json, quiet):
    """Generate samples from a trained system: PNGs, a grid with grain-map overlays and (--npz) samples.npz."""
    registry = (obj or {}).get("registry")
    outputs.claim_and_hold(out, "sample")
    classes = generation.parse_classes(class_list)
    dev = dist.init_distributed(device)
    record, _ = systems.read_record(system_dir)
    if not record.vae:
        raise ConfigError(
            f"the system in {system_dir} has no VAE, so it cannot make images; add one with "
            f"d2it import sd-vae sd-vae-ft-ema --out {system_dir}"
        )
    # reject bad classes before loading weights
    generation.sample_labels(num, record.num_classes, classes=classes, classes_uniform=classes_uniform, seed=seed)
    sampler_sets, _ = generation.split_sampler_sets(sets)
    sampler, sampler_options = generation.sampler_choice(record, sampler, sampler_sets, registry)
    system = systems.load(system_dir, registry, device=dev)
    out = Path(out)
    paths = generation.run_shards(
        system,
        num,
        out,
        classes=classes,
        classes_uniform=classes_uniform,
        seed=seed,
        steps=steps,
        sampler=sampler,
        sampler_options=sampler_options,
        cfg_scale=cfg_scale,
        grain_cfg_scale=grain_cfg_scale,
        batch=batch,
        device=dev,
        progress=not quiet,
        resume=not no_resume,
    )
    if not dist.is_main():
        dist.barrier()
        return
    arrays = generation.read_shards(paths)
    summary = write_outputs(arrays, out, grains=system.grains)
    written = [*sorted((out / SAMPLE_DIR).iterdir()), out / GRID_NAME]
    if npz:
        generation.write_npz(out / generation.NPZ_NAME, **arrays)
        summary["npz"] = str(out / generation.NPZ_NAME)
        written.append(out / generation.NPZ_NAME)
    settings = json.loads((out / generation.SHARD_DIR / generation.MANIFEST_NAME).read_text())
    shutil.rmtree(out / generation.SHARD_DIR)
    atomic_write_text(out / generation.MANIFEST_NAME, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    outputs.record(out, [*written, out / generation.MANIFEST_NAME], command="sample")
    dist.barrier()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['num']} samples to {summary['samples']} and the grid to {summary['grid']}")
    if "fine_ratio" in summary:
        click.echo(f"fine-grained regions: {100 * summary['fine_ratio']:.1f}%")
    if npz:
        click.echo(f"wrote {summary['npz']}")
