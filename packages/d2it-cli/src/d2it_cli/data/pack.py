"""Pack an image folder (ImageFolder tree or flat) into webdataset tar shards, the route to ImageNet-size runs.

Each sample is `<key>.<jpg|png|webp>` (the file's bytes, not re-encoded) plus `<key>.cls` (the
class index); samples are shuffled once with a seed so that every shard mixes classes, and
`classes.json` beside the shards records the class names, the sample count and the shard pattern
that `--data wds:` takes. Every shard is written under a temporary name and renamed when complete.
"""

import json
import os
import random
from pathlib import Path

import attrs

from d2it.errors import DataError
from d2it.io import atomic_write_text
from d2it_cli.data.folder import EXTENSIONS, scan_folder
from d2it_cli.data.wds import CLASSES_FILE

SUFFIX = {".jpeg": "jpg", ".jpg": "jpg", ".png": "png", ".webp": "webp"}


@attrs.frozen
class PackResult:
    """What `pack_folder` wrote."""

    out: Path
    pattern: str
    shards: int
    count: int
    classes: list[str]


def pack_folder(
    root, out, *, shard_size: int = 1000, prefix: str = "train", seed: int | None = 0, progress=None
) -> PackResult:
    """Write `root`'s images into OUT/PREFIX-000000.tar ... and OUT/classes.json; `seed=None` keeps folder order."""
    root, out = Path(root), Path(out)
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    classes, files, labels = scan_folder(root, EXTENSIONS)
    if not files:
        raise DataError(f"no PNG, JPEG or WebP images found in {root}")
    order = list(range(len(files)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    import webdataset  # seconds to import: only for packing

    shards = (len(order) + shard_size - 1) // shard_size
    for shard in range(shards):
        name = f"{prefix}-{shard:06d}.tar"
        tmp = out / f".{name}.tmp"
        with webdataset.TarWriter(str(tmp), encoder=False, mtime=0) as writer:
            for position in order[shard * shard_size : (shard + 1) * shard_size]:
                path = root / files[position]
                writer.write(
                    {
                        "__key__": f"{position:09d}",
                        SUFFIX[path.suffix.lower()]: path.read_bytes(),
                        "cls": str(labels[position]).encode(),
                    }
                )
        os.replace(tmp, out / name)
        if progress is not None:
            progress(shard + 1, shards)
    pattern = f"{prefix}-{{{0:06d}..{shards - 1:06d}}}.tar"
    meta = {"classes": classes, "count": len(files), "pattern": pattern, "source": str(root)}
    atomic_write_text(out / CLASSES_FILE, json.dumps(meta, indent=2) + "\n")
    return PackResult(out=out, pattern=pattern, shards=shards, count=len(files), classes=classes)
