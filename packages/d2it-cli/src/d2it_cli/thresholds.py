"""Grain thresholds from data: dataset percentiles of region entropy (`d2it thresholds`)."""

import json
from pathlib import Path

import numpy as np
import torch

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import atomic_write_text
from d2it.progress import progress_bar
from d2it.registry import default_registry
from d2it_cli.data import data_provenance, is_streaming, one_pass, open_dataset
from d2it_vae.entropy import fit_thresholds


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


def measure_thresholds(
    data: str,
    out,
    *,
    system_dir=None,
    ratio: float = 0.5,
    image_size: int | None = None,
    grains: int = 2,
    batch: int = 64,
    limit: int | None = None,
    workers: int = 0,
    options: dict | None = None,
    device=None,
    progress: bool = True,
    registry=None,
) -> dict:
    """Region entropies of `data`: percentiles 1-99 and the k-1 thresholds for `ratio` written to `out` (JSON).

    With `system_dir` its VAE's grain coder is used and the thresholds are stored in its record;
    without, the default `entropy` coder with `grains` grains at `image_size` (default 256).
    `options` are the dataset's (`d2it_cli.data.data_options`). Returns the document written.
    """
    registry = registry or default_registry()
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio must lie strictly between 0 and 1, got {ratio}")
    if grains < 2:
        raise ConfigError(f"--grains must be at least 2, got {grains}")
    coder, image_size, grains = _coder(system_dir, registry, image_size, grains)
    dataset = open_dataset(data, image_size, train=False, options=options, registry=registry)
    provenance = data_provenance(dataset)
    if is_streaming(dataset):
        one_pass(dataset, 0, 1)
    elif limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    dev = systems.torch_device(device)
    coder.to(dev)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    chunks, count = [], 0
    with torch.no_grad():
        for images, _ in progress_bar(loader, desc="entropy", enabled=progress):
            if limit is not None:  # a stream has no Subset
                images = images[: max(0, limit - count)]
            count += images.shape[0]
            if images.shape[0]:
                chunks.append(coder.scores(images.to(dev)).float().cpu().numpy().ravel())
    values = np.concatenate(chunks).astype(np.float64)
    found = fit_thresholds(values, grains, ratio)
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
        "share_above": [float((values > t).mean()) for t in found],
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentiles": {str(p): float(v) for p, v in zip(range(1, 100), np.percentile(values, range(1, 100)))},
        **({"data_provenance": provenance} if provenance else {}),
    }
    atomic_write_text(Path(out), json.dumps(doc, indent=2) + "\n")
    if system_dir:
        systems.update_record(system_dir, thresholds=tuple(found))
    return doc
