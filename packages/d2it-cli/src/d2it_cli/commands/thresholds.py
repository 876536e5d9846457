"""`d2it thresholds`: dataset percentiles of region entropy, and the grain thresholds they give."""

import json
import sys
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import atomic_write_text
from d2it.system import torch_device
from d2it_cli.commands.params import DEVICE, NON_NEGATIVE_INT, OPEN_UNIT_INTERVAL, POSITIVE_INT
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.data import data_options, is_streaming, one_pass, open_dataset


def thresholds_for(values: np.ndarray, ratio: float, grains: int) -> list[float]:
    """k-1 thresholds: T_g is the 100 * (1 - ratio**g) percentile (two grains: 100 * (1 - r), r = 0.5 the median)."""
    return [float(np.percentile(values, 100.0 * (1.0 - ratio**g))) for g in range(1, grains)]


def _coder(system_dir, registry, image_size, grains):
    """(grain coder, image size, grains) from the system's VAE or, without a system, the default `entropy` coder."""
    if system_dir:
        record, _ = systems.read_record(system_dir)
        if not record.vae:
            raise ConfigError(f"the system in {system_dir} has no VAE and needs no thresholds")
        if image_size is not None and image_size != record.image_size:
            raise ConfigError(f"--image-size {image_size} differs from the system's image size {record.image_size}")
        record = record.canonical(registry)
        vae = systems.build_vae(record, registry)
        coder = getattr(vae, "coder", None)
        if coder is None or vae.grains < 2:
            raise ConfigError(f"the VAE {record.vae!r} has one grain and needs no thresholds")
        return coder, record.image_size, vae.grains
    coder = registry.create("grain_coder", "entropy", {"grains": grains}, where="grain_coder")
    return coder, image_size or 256, grains


@click.command()
@click.option(
    "--data", required=True, help="Images: a folder, synthetic[:N], wds:SHARDS, hf:PATH[:split], NAME:ROOT (no flips)."
)
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE, repeatable.")
@click.option(
    "--system",
    "system_dir",
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory: its VAE's coder is used and the thresholds are stored in its d2it.json.",
)
@click.option(
    "--ratio", default=0.5, show_default=True, type=OPEN_UNIT_INTERVAL,
        help="Share r of regions coded finer than coarsest."
)
@click.option("--image-size", type=POSITIVE_INT, help="Image size (default: the system's, else 256).")
@click.option("--grains", default=2, show_default=True, type=click.IntRange(min=2),
              help="Number of grains (without --system).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file for percentiles and thresholds.")
@click.option("--batch", default=64, show_default=True, type=POSITIVE_INT)
@click.option("--limit", type=POSITIVE_INT, help="Use only the first N images.")
@click.option("--workers", default=0, show_default=True, type=NON_NEGATIVE_INT)
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--device", type=DEVICE, help="cpu, cuda ... (default: CUDA when available).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def thresholds(
    obj,
    data,
    data_option,
    system_dir,
    ratio,
    image_size,
    grains,
    out,
    batch,
    limit,
    workers,
    strict_data,
    device,
    quiet,
):
    """Region entropies over a dataset: percentiles 1-99 to --out, thresholds for --ratio into the system record."""
    registry = obj["registry"]
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio must lie strictly between 0 and 1, got {ratio}")
    if grains < 2:
        raise ConfigError(f"--grains must be at least 2, got {grains}")
    coder, image_size, grains = _coder(system_dir, registry, image_size, grains)
    options = data_options(data, strict_data, data_option, registry)
    dataset = open_dataset(data, image_size, train=False, options=options, registry=registry)
    if is_streaming(dataset):
        one_pass(dataset, 0, 1)
    elif limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    dev = torch_device(device)
    coder.to(dev)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    chunks, count = [], 0
    with torch.no_grad():
        for images, _ in tqdm(loader, desc="entropy", disable=quiet or not sys.stdout.isatty()):
            if limit is not None:  # a stream has no Subset
                images = images[: max(0, limit - count)]
            count += images.shape[0]
            if images.shape[0]:
                chunks.append(coder.scores(images.to(dev)).float().cpu().numpy().ravel())
    values = np.concatenate(chunks).astype(np.float64)
    found = thresholds_for(values, ratio, grains)
    shares = [float((values > t).mean()) for t in found]
    doc = {
        "data": data,
        "images": count,
        "regions": int(values.size),
        "image_size": image_size,
        "region": int(getattr(coder, "region", 0)),
        "bins": getattr(coder, "bins", None),
        "sigma": getattr(coder, "sigma", None),
        "grains": grains,
        "ratio": ratio,
        "thresholds": found,
        "share_above": shares,
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentiles": {str(p): float(v) for p, v in zip(range(1, 100), np.percentile(values, range(1, 100)))},
    }
    atomic_write_text(Path(out), json.dumps(doc, indent=2) + "\n")
    click.echo(
        f"{values.size} regions of {count} images: thresholds {[round(t, 4) for t in found]} "
        f"(share above: {[round(s, 3) for s in shares]}); wrote {out}"
    )
    if system_dir:
        systems.update_record(system_dir, thresholds=tuple(found))
        click.echo(f"stored the thresholds in {Path(system_dir) / systems.RECORD_FILE}")
