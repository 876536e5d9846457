"""`d2it encode`: cache DVAE posteriors and grain maps of a dataset (each image and its flip) for stage 2."""

import json
import math
import sys
import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from d2it import system as systems
from d2it.errors import DataError
from d2it.io import atomic_write_text, save_safetensors, state_sha256
from d2it_cli import outputs
from d2it_cli.cache import FORMAT, MANIFEST, VERSIONS, shard_name
from d2it_cli.cache_layout import MODES, bytes_per_image, human, pack_used
from d2it_cli.commands.params import DEVICE, NON_NEGATIVE_INT, POSITIVE_INT, SEED
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.data import data_options, dataset_classes, is_streaming, one_pass, open_dataset
from d2it_cli.engine import dist
from d2it_cli.engine.parts import load_vae

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class ShardWriter:
    """Buffers encoded items and writes a safetensors shard every `size` images."""

    def __init__(self, out: Path, rank: int, size: int, dtype):
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
        save_safetensors(head, self.out / name, {"d2it.cache": str(FORMAT)})
        self.shards.append({"file": name, "count": int(n)})
        self.buffer = [rest] if rest["label"].shape[0] else []
        self.count = int(rest["label"].shape[0])


def _size_line(vae, record, dev, layout: str, dtype: str, dataset) -> str:
    """'cache: 41.5 KB per image (with its flip), 53.2 GB for 1,281,167 images' from a probe encode of one image."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, record.image_size, record.image_size, device=dev)
        grain_map = vae.grain_map(probe)
        shapes = [list(p.shape[1:]) for p in vae.encode(probe, grain_map)]
    share = 0.5 if vae.grains > 1 else 1.0
    per_image = bytes_per_image(shapes, list(grain_map.shape[1:]), layout, DTYPES[dtype].itemsize, share)
    count = len(dataset) if not is_streaming(dataset) else getattr(dataset, "length", None)
    where = f"{human(per_image * count)} for {count:,} images" if count else "dataset size unknown (a stream)"
    note = " at a fine ratio of 0.5" if layout == "used" else ""
    return f"cache: {human(per_image)} per image with its flip ({dtype}, grains {layout}{note}); {where}"


@click.command()
@click.option(
    "--system",
    "system_dir",
    required=True,
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory with a trained DVAE.",
)
@click.option("--data", required=True, help="Images: a folder, synthetic[:N], wds:SHARDS, hf:PATH[:split], NAME:ROOT.")
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE, repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache directory to write.")
@click.option("--batch", default=32, show_default=True, type=POSITIVE_INT)
@click.option("--shard-size", default=4096, show_default=True, type=POSITIVE_INT,
              help="Images (each with its flip) per shard.")
@click.option(
    "--dtype",
    type=click.Choice(sorted(DTYPES)),
    default="bf16",
    show_default=True,
    help="Storage type of the posterior parameters (bf16 halves the cache; sampling the posterior is unaffected).",
)
@click.option(
    "--grains",
    "layout",
    type=click.Choice(MODES),
    default="all",
    show_default=True,
    help="all: every grain everywhere (needed by --grain-source random); used: only each region's own grain.",
)
@click.option("--workers", default=0, show_default=True, type=NON_NEGATIVE_INT)
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the latent draws that measure the scale.")
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache.")
@click.option("--device", type=DEVICE, help="cpu, cuda ... (default: CUDA when available; torchrun: the local GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def encode(
    obj,
    system_dir,
    data,
    data_option,
    out,
    batch,
    shard_size,
    dtype,
    layout,
    workers,
    seed,
    strict_data,
    overwrite,
    device,
    quiet,
):
    """Encode a dataset into a latent cache and store the latent scale (1/std) in the system record."""
    registry = obj["registry"]
    outputs.claim_and_hold(out, "encode", legacy=lambda f: (f / MANIFEST).is_file(), what="latent cache")
    if batch < 1 or shard_size < 1:
        raise DataError("--batch and --shard-size must be at least 1")
    dev = dist.init_distributed(device)
    record, vae = load_vae(system_dir, registry, device=dev)
    vae.eval()
    vae_hash = state_sha256(vae.state_dict())
    options = data_options(data, strict_data, data_option, registry)
    dataset = open_dataset(data, record.image_size, train=False, options=options, registry=registry)
    num_classes = dataset_classes(dataset)
    out = Path(out)
    if dist.is_main():
        if (out / MANIFEST).exists():
            if not overwrite:
                raise DataError(f"latent cache {out} already exists; pass --overwrite to replace it")
            (out / MANIFEST).unlink()
            for old in out.glob("shard-*.safetensors"):
                old.unlink()
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    if is_streaming(dataset):  # every sample once, this rank's shards; no dataset index to record
        mine = None
        loader = torch.utils.data.DataLoader(
            one_pass(dataset, dist.rank(), dist.world_size()), batch_size=batch, num_workers=workers
        )
    else:
        mine = list(range(dist.rank(), len(dataset), dist.world_size()))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, mine), batch_size=batch, num_workers=workers
        )
    writer = ShardWriter(out, dist.rank(), shard_size, DTYPES[dtype])
    g = torch.Generator(device=dev).manual_seed((seed * 1000 + dist.rank()) % 2**64)
    stats = torch.zeros(3, dtype=torch.float64, device=dev)  # count, sum, sum of squares of sampled latents
    shapes, start, done, top_label = None, time.perf_counter(), 0, -1
    if dist.is_main():
        click.echo(_size_line(vae, record, dev, layout, dtype, dataset))
    bar = tqdm(loader, desc="encode", disable=quiet or not sys.stdout.isatty() or not dist.is_main())
    with torch.no_grad():
        for images, labels in bar:
            images = images.to(dev)
            b = images.shape[0]
            both = torch.cat([images, images.flip(-1)])
            grain_map = vae.grain_map(both)
            params = vae.encode(both, grain_map)
            z = vae.sample_latent(params, grain_map, generator=g).double()
            stats += torch.stack(
                [torch.tensor(float(z.numel()), dtype=torch.float64, device=dev), z.sum(), z.square().sum()]
            )
            if layout == "all":
                item = {
                    f"params.{i}": torch.stack([p[:b], p[b:]], 1).to(writer.dtype).cpu() for i, p in enumerate(params)
                }
            else:  # rows in (image, version) order: image i's version v is row v * b + i of the batch
                order = torch.arange(2 * b, device=dev).view(2, b).t().reshape(-1)
                used = pack_used([p[order].to(writer.dtype) for p in params], grain_map[order])
                item = {k: (v.view(b, VERSIONS) if k.startswith("count.") else v).cpu() for k, v in used.items()}
            item["grain_map"] = torch.stack([grain_map[:b], grain_map[b:]], 1).to(torch.uint8).cpu()
            item["label"] = torch.as_tensor(labels, dtype=torch.int64)
            top_label = max(top_label, int(item["label"].max()))
            index = mine[done : done + b] if mine is not None else [-1] * b
            item["index"] = torch.tensor(index, dtype=torch.int64)
            writer.add(item)
            shapes = shapes or {
                "params": [list(p.shape[1:]) for p in params],
                "grain_map": list(grain_map.shape[1:]),
                "latent": list(z.shape[1:]),
            }
            done += b
    writer.flush()
    dist.all_reduce_sum(stats)
    shards = writer.shards
    if dist.is_distributed():
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, (writer.shards, top_label))
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
    scale = 1.0 / std
    num_classes = max(num_classes, top_label + 1)  # a stream may not know its classes up front
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
            "num_classes": num_classes,
            "classes": list(getattr(dataset, "classes", []) or []),
            "latent_mean": mean,
            "latent_std": std,
            "latent_scale": scale,
            "seconds": round(time.perf_counter() - start, 3),
            "shards": shards,
        }
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: marks the cache complete
        systems.update_record(system_dir, latent_scale=scale)
        click.echo(
            f"encoded {manifest['count']} images (x{VERSIONS} with flips) into {len(shards)} shard(s) at {out}; "
            f"latent std {std:.4f} -> latent scale {scale:.4f} stored in {system_dir}"
        )
    dist.barrier()
