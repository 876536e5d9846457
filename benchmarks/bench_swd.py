"""Stability of `swd`: its spread over resamplings of real images against itself, and against a mildly blurred set.

For each set size n (500, 1,000, 2,000 at 64 px) and each of `repeats` seeds r: a permutation of the image
pool (seeded by r) gives two disjoint sets A and B of n images; SWD(A, B) is real against real, SWD(A, blur(B))
real against a real difference (Gaussian blur, σ 0.75 px, reflect borders). The SWD seed is r as well, so
the spread covers both the choice of images and of neighbourhoods and directions. Reported: mean ± standard
deviation over the seeds, per level (x10³) and of the mean over levels, and the seconds one SWD took.
Images: `--data openmoji:all` (4,495 emoji, rendered offline) when the `openmoji` dataset is installed,
else `synthetic:N`.
Run: python benchmarks/run.py swd [--quick]   (or python benchmarks/bench_swd.py [--data SPEC] [--sizes 500,1000])
"""

import argparse
import statistics
import sys
import time

import attrs
import torch
import torch.nn.functional as F
from common import machine, markdown_table, save

from d2it_cli.evaluation.swd import SwdConfig, sliced_wasserstein

SIZES = (500, 1000, 2000)
REPEATS = 5
BLUR = 0.75
IMAGE_SIZE = 64


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 (N, 3, H, W) images, back to uint8."""
    r = int(3 * sigma + 1)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(images.float(), (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8)


def load_pool(spec: str | None, count: int) -> tuple[torch.Tensor, str]:
    """(count, 3, 64, 64) uint8 images and where they came from: openmoji:all if available, else synthetic."""
    from d2it.errors import D2itError
    from d2it_cli.data import open_dataset

    specs = [spec] if spec else ["openmoji:all", f"synthetic:{count}"]
    for s in specs:
        try:
            dataset = open_dataset(s, image_size=IMAGE_SIZE, train=False)
        except D2itError as exc:
            print(f"({s} is not available: {exc})", file=sys.stderr)
            continue
        if len(dataset) < count:
            print(f"({s} holds {len(dataset)} images, fewer than {count})", file=sys.stderr)
            continue
        images = []
        for i in range(count):
            item = dataset[i]
            x = item[0] if isinstance(item, (list, tuple)) else item
            images.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        return torch.stack(images), s
    raise SystemExit(f"no image source among {', '.join(specs)}")


def spread(values: list[dict], key: str) -> tuple[float, float]:
    """(mean, standard deviation) of one key over the repeats."""
    xs = [v[key] for v in values]
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def run(quick: bool, data: str | None = None, sizes=None, repeats: int | None = None) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick`: 100/200 images, 3 seeds."""
    sizes = tuple(sizes or ((100, 200) if quick else SIZES))
    repeats = repeats or (3 if quick else REPEATS)
    config = SwdConfig()
    start = time.perf_counter()
    pool, source = load_pool(data, 2 * max(sizes))
    load_s = time.perf_counter() - start
    results = {}
    for n in sizes:
        rows = {"real": [], "blurred": []}
        seconds = []
        for r in range(repeats):
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(r))
            a, b = pool[order[:n]], pool[order[n : 2 * n]]
            t = time.perf_counter()
            rows["real"].append(sliced_wasserstein(a, b, seed=r, config=config))
            seconds.append(time.perf_counter() - t)
            rows["blurred"].append(sliced_wasserstein(a, blur(b, BLUR), seed=r, config=config))
            print(f"n={n} seed={r}: real {rows['real'][-1]['swd']:.2f}, blurred {rows['blurred'][-1]['swd']:.2f}",
                  flush=True)  # fmt: skip
        results[n] = {**rows, "seconds_per_swd": statistics.median(seconds)}
    keys = ["swd"] + [k for k in results[sizes[0]]["real"][0] if k != "swd"]
    headers = ["images per set", "pair"] + [f"{k} (x10³)" for k in keys] + ["s per SWD"]
    table_rows = []
    for n in sizes:
        for pair, label in (("real", "real vs real"), ("blurred", f"real vs blur σ {BLUR}")):
            cells = [f"{m:.2f} ± {s:.2f}" for m, s in (spread(results[n][pair], k) for k in keys)]
            table_rows.append([n, label, *cells, f"{results[n]['seconds_per_swd']:.1f}"])
    text = (
        f"SWD of two disjoint sets of {source} images at {IMAGE_SIZE} px, mean ± std over {repeats} seeds "
        f"(images, neighbourhoods and directions all resampled); {config.nhoods_per_image} neighbourhoods of "
        f"{config.nhood_size}x{config.nhood_size} per image, {config.dir_repeats}x{config.dirs_per_repeat} "
        "directions.\n\n" + markdown_table(headers, table_rows)
    )
    result = {
        "load_seconds": round(load_s, 1),
        "setup": machine(
            source=source, image_size=IMAGE_SIZE, repeats=repeats, blur_sigma=BLUR, config=attrs.asdict(config)
        ),
        "results": {str(n): v for n, v in results.items()},
        "summary": {
            str(n): {
                p: {k: dict(zip(("mean", "std"), spread(results[n][p], k))) for k in keys}
                for p in results[n]
                if p != "seconds_per_swd"
            }
            for n in sizes
        },
    }
    save("swd", result, text, quick=quick)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default=None, help="--data spec of the image pool (default: openmoji:all)")
    parser.add_argument("--sizes", default=None, help="comma-separated set sizes (default: 500,1000,2000)")
    parser.add_argument("--repeats", type=int, default=None, help=f"seeds per size (default: {REPEATS})")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    sys.exit(0 if run(args.quick, args.data, sizes, args.repeats) else 1)
