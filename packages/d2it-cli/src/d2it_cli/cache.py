"""The latent cache: written by `encode_cache` (`d2it encode`); read by `LatentCache` (`d2it_cli.data.latents`).

A cache directory holds `manifest.json` (written last: a cache without it is incomplete) and
safetensors shards `shard-rRRR-NNNNN.safetensors` (one series per rank). Each shard stores, for n
images, every grain's posterior parameters on that grain's full grid (KL: mean and log-variance;
VQ: codes) for the image and for its horizontal flip, the grain maps of both, the labels and the
dataset indices:

    params.<g>   (n, 2, P, h_g, w_g)   g = 0 (coarsest) .. k-1, version 0 = image, 1 = flip
    grain_map    (n, 2, h, w) uint8
    label        (n,) int64
    index        (n,) int64

The manifest records: format, vae, vae_sha256 (the DVAE weights that encoded it), system, data,
count, versions (2), grains, latent_channels, posterior ("gaussian" or "codes"), shapes, dtype,
layout ("all" or "used"), image_size, thresholds, num_classes, classes, latent_mean/std/scale (of latents drawn from the
posteriors), seconds, shards (file, count) and, where the dataset describes itself, data_provenance (its
`provenance()`: name, version, licence, ...).

Because every grain is stored everywhere, a latent can be laid out for any grain map (the
`--grain-source random` ablation). `--grains used` (manifest layout "used") stores only each
region's own grain instead (`cache_layout.py`: rows `used.<g>` and per-image counts `count.<g>`),
and `--dtype bf16` (the default) the parameters in bfloat16. Latents are drawn from the stored
posterior at every step by the VAE's own `sample_latent` (its regularizer's `sample`).
"""

import json
import math
import time

import torch

from d2it import dist
from d2it import system as systems
from d2it.errors import DataError
from d2it.io import atomic_write_text, save_safetensors, state_sha256
from d2it.parts import load_vae
from d2it.progress import progress_bar
from d2it_cli import outputs
from d2it_cli.cache_layout import bytes_per_image, human, pack_used
from d2it_cli.data import data_provenance, dataset_classes, is_streaming, one_pass, open_dataset
from d2it_cli.data.latents import (  # noqa: F401 - the reader, re-exported
    FORMAT,
    MANIFEST,
    VERSIONS,
    LatentCache,
    check_manifest,
    read_manifest,
    shard_name,
)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # storage types of the parameters


# -- writing ---------------------------------------------------------------------------------------------


class ShardWriter:
    """Buffers encoded items and writes a safetensors shard every `size` images."""

    def __init__(self, out: outputs.Output, rank: int, size: int, dtype):
        self.out, self.rank, self.size, self.dtype = out, rank, size, dtype
        self.buffer: list[dict] = []
        self.count = 0
        self.shards: list[dict] = []

    def add(self, item: dict):
        """Queue one batch of items; flush whole shards."""
        self.buffer.append(item)
        self.count += item["label"].shape[0]
        while self.count >= self.size:
            self.flush(self.size)

    def flush(self, n: int | None = None):
        """Write the first `n` buffered images (all by default) as one shard."""
        if not self.buffer:
            return
        merged = {k: torch.cat([b[k] for b in self.buffer]) for k in self.buffer[0]}
        n = merged["label"].shape[0] if n is None else n
        cut = {k: n for k in merged}
        for k in merged:  # `used` rows: as many as the first n images' regions of that grain
            if k.startswith("used."):
                cut[k] = int(merged[f"count.{k[5:]}"][:n].sum())
        head = {k: v[: cut[k]] for k, v in merged.items()}
        rest = {k: v[cut[k] :] for k, v in merged.items()}
        name = shard_name(self.rank, len(self.shards))
        save_safetensors(head, self.out.path(name), {"d2it.cache": str(FORMAT)})
        self.shards.append({"file": name, "count": int(n)})
        self.buffer = [rest] if rest["label"].shape[0] else []
        self.count = int(rest["label"].shape[0])


def encode_cache(system_dir, data: str, out, *, overwrite: bool = False, **settings) -> dict | None:
    """Encode a dataset (each image and its flip) with the system's DVAE into a cache at `out` (every rank).

    `out` is claimed as an output folder (`outputs.claimed`): new, empty, or a cache of ours, replaced
    (only our own files) with `overwrite`. `settings` are `_encode`'s. Returns the manifest on rank 0,
    None on the other ranks.
    """
    exists = "latent cache {folder} already exists; pass --overwrite to replace it"
    with outputs.claimed(out, "encode", overwrite=overwrite, exists=exists, what="latent cache") as claim:
        return _encode(system_dir, data, claim, **settings)


def size_line(vae, image_size: int, device, layout: str, dtype: str, dataset) -> str:
    """'cache: 41.5 KB per image (with its flip), 53.2 GB for 1,281,167 images' from a probe encode of one image."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        grain_map = vae.grain_map(probe)
        shapes = [list(p.shape[1:]) for p in vae.encode(probe, grain_map)]
    share = 0.5 if vae.grains > 1 else 1.0
    per_image = bytes_per_image(shapes, list(grain_map.shape[1:]), layout, DTYPES[dtype].itemsize, share)
    count = len(dataset) if not is_streaming(dataset) else getattr(dataset, "length", None)
    where = f"{human(per_image * count)} for {count:,} images" if count else "dataset size unknown (a stream)"
    note = " at a fine ratio of 0.5" if layout == "used" else ""
    return f"cache: {human(per_image)} per image with its flip ({dtype}, grains {layout}{note}); {where}"


def _encode_batch(vae, images, labels, indices, generator, dtype, layout) -> tuple[dict, torch.Tensor, dict]:
    """(shard item, moments, shapes) of one batch: the posteriors of every image and of its flip, and the
    count, sum and sum of squares of a latent drawn from them (float64, for the latent scale)."""
    b = images.shape[0]
    both = torch.cat([images, images.flip(-1)])
    grain_map = vae.grain_map(both)
    params = vae.encode(both, grain_map)
    z = vae.sample_latent(params, grain_map, generator=generator).double()
    count = torch.tensor(float(z.numel()), dtype=torch.float64, device=z.device)
    moments = torch.stack([count, z.sum(), z.square().sum()])
    if layout == "all":
        item = {f"params.{i}": torch.stack([p[:b], p[b:]], 1).to(dtype).cpu() for i, p in enumerate(params)}
    else:  # rows in (image, version) order: image i's version v is row v * b + i of the batch
        order = torch.arange(2 * b, device=images.device).view(2, b).t().reshape(-1)
        used = pack_used([p[order].to(dtype) for p in params], grain_map[order])
        item = {k: (v.view(b, VERSIONS) if k.startswith("count.") else v).cpu() for k, v in used.items()}
    item["grain_map"] = torch.stack([grain_map[:b], grain_map[b:]], 1).to(torch.uint8).cpu()
    item["label"] = torch.as_tensor(labels, dtype=torch.int64)
    item["index"] = torch.tensor(indices, dtype=torch.int64)
    shapes = {
        "params": [list(p.shape[1:]) for p in params],
        "grain_map": list(grain_map.shape[1:]),
        "latent": list(z.shape[1:]),
    }
    return item, moments, shapes


def _encode(
    system_dir,
    data: str,
    out: outputs.Output,
    *,
    batch: int = 32,
    shard_size: int = 4096,
    dtype: str = "bf16",
    layout: str = "all",
    workers: int = 0,
    seed: int = 0,
    options: dict | None = None,
    device=None,
    progress: bool = True,
    announce=None,
    registry=None,
) -> dict | None:
    """Encode a dataset (each image and its flip) with the system's DVAE into the claimed folder `out` (every rank).

    Also measures the latent scale (1/std of latents drawn from the posteriors, seeded by `seed`)
    and stores it in the system record. `options` are the dataset's (`d2it_cli.data.data_options`);
    `layout` "all" stores every grain everywhere, "used" each region's own; `announce(text)` hears
    the cache's size before encoding starts (rank 0).
    Returns the manifest on rank 0, None on the other ranks.
    """
    if batch < 1 or shard_size < 1:
        raise DataError("--batch and --shard-size must be at least 1")
    dev = dist.init_distributed(device)
    record, vae = load_vae(system_dir, registry, device=dev)
    vae.eval()
    vae_hash = state_sha256(vae.state_dict())
    dataset = open_dataset(data, record.image_size, train=False, options=options, registry=registry)
    if dist.is_main():
        out.remove(MANIFEST)  # an earlier cache of ours is incomplete from here on; its other files go at the end
    dist.barrier()
    if is_streaming(dataset):  # every sample once, this rank's shards; no dataset index to record
        mine, part = None, one_pass(dataset, dist.rank(), dist.world_size())
    else:
        mine = list(range(dist.rank(), len(dataset), dist.world_size()))
        part = torch.utils.data.Subset(dataset, mine)
    loader = torch.utils.data.DataLoader(part, batch_size=batch, num_workers=workers)
    writer = ShardWriter(out, dist.rank(), shard_size, DTYPES[dtype])
    g = torch.Generator(device=dev).manual_seed((seed * 1000 + dist.rank()) % 2**64)
    stats = torch.zeros(3, dtype=torch.float64, device=dev)  # count, sum, sum of squares of sampled latents
    shapes, start, done, top_label = None, time.perf_counter(), 0, -1
    if announce is not None and dist.is_main():
        announce(size_line(vae, record.image_size, dev, layout, dtype, dataset))
    with torch.no_grad():
        for images, labels in progress_bar(loader, desc="encode", enabled=progress and dist.is_main()):
            b = images.shape[0]
            index = mine[done : done + b] if mine is not None else [-1] * b
            item, moments, shapes = _encode_batch(vae, images.to(dev), labels, index, g, writer.dtype, layout)
            top_label = max(top_label, int(item["label"].max()))
            stats += moments
            writer.add(item)
            done += b
    writer.flush()
    shards, shapes, top_label, (mean, std) = _gather(writer.shards, shapes, top_label, stats, data)
    manifest = None
    if dist.is_main():
        manifest = {
            "format": FORMAT,
            "vae": record.vae,
            "vae_sha256": vae_hash,
            "system": str(system_dir),
            "data": data,
            "count": sum(s["count"] for s in shards),
            "versions": VERSIONS,
            "grains": vae.grains,
            "latent_channels": vae.latent_channels,
            "posterior": "gaussian" if shapes["params"][0][0] == 2 * vae.latent_channels else "codes",
            "shapes": shapes,
            "dtype": dtype,
            "layout": layout,
            "image_size": record.image_size,
            "thresholds": list(vae.thresholds),
            "num_classes": max(dataset_classes(dataset), top_label + 1),  # a stream may not know its classes
            "classes": list(getattr(dataset, "classes", []) or []),
            "latent_mean": mean,
            "latent_std": std,
            "latent_scale": 1.0 / std,
            "seconds": round(time.perf_counter() - start, 3),
            "shards": shards,
            **({"data_provenance": provenance} if (provenance := data_provenance(dataset)) else {}),
        }
        for shard in shards:  # every rank's, known to rank 0 since the gather
            out.record(shard["file"])
        atomic_write_text(out.path(MANIFEST), json.dumps(manifest, indent=2) + "\n")  # last: marks the cache complete
        systems.update_record(system_dir, latent_scale=1.0 / std)
    dist.barrier()
    return manifest


def _gather(shards: list[dict], shapes: dict | None, top_label: int, stats: torch.Tensor, data: str):
    """(every rank's shards, the shapes, the largest label, (mean, std) of the sampled latents), over all ranks."""
    dist.all_reduce_sum(stats)
    if dist.is_distributed():
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, (shards, top_label))
        shards = [s for part, _ in gathered for s in part]
        top_label = max(top for _, top in gathered)
        shapes = dist.broadcast_object(shapes)
    count, total, squares = stats.tolist()
    if count == 0 or shapes is None:
        raise DataError(f"no images were encoded from {data}")
    mean = total / count
    std = math.sqrt(max(squares / count - mean * mean, 0.0))
    if not std > 0:
        raise DataError("the sampled latents have zero spread; the latent scale is undefined")
    return shards, shapes, top_label, (mean, std)
