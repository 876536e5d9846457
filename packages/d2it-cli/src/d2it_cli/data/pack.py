"""Pack an image folder (ImageFolder tree or flat) into webdataset tar shards, the route to ImageNet-size runs.

Each sample is `<key>.<jpg|png|webp>` (the file's bytes, not re-encoded) plus `<key>.cls` (the
class index); samples are shuffled once with a seed so that every shard mixes classes, and
`classes.json` beside the shards records the class names, the sample count and the shard pattern
that `--data wds:` takes. Every shard is written under a temporary name and renamed when complete; the
folder is claimed (`outputs.claimed`), so a rerun replaces exactly an earlier pack's files.
"""

import json
import random
from pathlib import Path

import attrs
from PIL import Image

from d2it.errors import DataError
from d2it.io import atomic_path, atomic_write_text
from d2it_cli import outputs
from d2it_cli.data.folder import EXTENSIONS, scan_folder
from d2it_cli.data.wds import CLASSES_FILE
from d2it_cli.decode import open_rgb

SUFFIX = {".jpeg": "jpg", ".jpg": "jpg", ".png": "png", ".webp": "webp"}


@attrs.frozen
class PackResult:
    """What `pack_folder` wrote."""

    out: Path
    pattern: str
    shards: int
    count: int
    classes: list[str]
    unreadable: list = attrs.field(factory=list)  # files left out because they cannot be decoded


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
    unreadable = _unreadable(root, files)
    skipped = set(unreadable)
    order = [i for i in range(len(files)) if files[i] not in skipped]
    if seed is not None:
        random.Random(seed).shuffle(order)
    import webdataset  # seconds to import: only for packing

    shards = (len(order) + shard_size - 1) // shard_size
    pattern = f"{prefix}-{{{0:06d}..{shards - 1:06d}}}.tar"
    with outputs.claimed(out, "pack") as claim:  # an earlier pack's shards that are not rewritten go at the end
        if not order:
            raise DataError(f"none of the {len(files)} images in {root} can be decoded (the first: {unreadable[0]})")
        for shard in range(shards):
            with atomic_path(claim.path(f"{prefix}-{shard:06d}.tar")) as tmp, open(tmp, "wb") as stream:
                writer = webdataset.TarWriter(stream, encoder=False, mtime=0)
                for position in order[shard * shard_size : (shard + 1) * shard_size]:
                    path = root / files[position]
                    writer.write(
                        {
                            "__key__": f"{position:09d}",
                            SUFFIX[path.suffix.lower()]: path.read_bytes(),
                            "cls": str(labels[position]).encode(),
                        }
                    )
                writer.close()
            if progress is not None:
                progress(shard + 1, shards)
        meta = {"classes": classes, "count": len(order), "pattern": pattern, "source": str(root)}
        atomic_write_text(claim.path(CLASSES_FILE), json.dumps(meta, indent=2) + "\n")
    return PackResult(out=out, pattern=pattern, shards=shards, count=len(order), classes=classes, unreadable=unreadable)


def _unreadable(root: Path, files: list) -> list:
    """The files (relative to `root`) the data routes' decoder cannot read: they are left out and counted."""
    bad = []
    for name in files:
        try:
            open_rgb(root / name)
        except (OSError, ValueError, SyntaxError, DataError, Image.DecompressionBombError):
            bad.append(name)
    return bad
