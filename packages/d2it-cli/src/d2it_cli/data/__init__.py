"""Datasets `folder`, `synthetic`, `wds`, `hf`, `openmoji` (registered in `d2it_cli.plugin`); `open_dataset`."""

import itertools
import json
import re
from pathlib import Path

from d2it.config import fields_of
from d2it.errors import DataError
from d2it.plugin_api import reserved_error
from d2it.registry import Registry, default_registry
from d2it_cli.data.folder import FolderConfig, FolderDataset
from d2it_cli.data.hf import HfConfig, HfDataset
from d2it_cli.data.openmoji import OpenMojiConfig, OpenMojiDataset
from d2it_cli.data.stream import StreamDataset, StreamSetup, is_streaming
from d2it_cli.data.synthetic import SyntheticConfig, SyntheticDataset
from d2it_cli.data.wds import WdsConfig, WdsDataset

NAME_RE = re.compile(r"^([a-z][a-z0-9_.-]*):(.*)$")
BARE_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


def parse_data(spec: str, registry: Registry | None = None) -> tuple[str, dict, str | None]:
    """`--data` value -> (dataset name, options, root).

    Accepted: `synthetic`, `synthetic:N`, `NAME:ROOT` for any registered dataset (`folder:ROOT`,
    `wds:SHARDS`, `hf:PATH[:split]`, `openmoji:SPLIT`, a plugin's: what ROOT means is the dataset's),
    a bare registered NAME (root None: `openmoji`), or a bare path (the folder dataset). A `NAME:`
    prefix that names no dataset is an error listing the valid names; an existing path always wins.
    """
    text = str(spec).strip()
    if not text:
        raise DataError("--data needs a directory, 'synthetic' or NAME:ROOT")
    if text == "synthetic" or text.startswith("synthetic:"):
        _, _, count = text.partition(":")
        if not count:
            return "synthetic", {}, None
        try:
            n = int(count)
        except ValueError:
            raise DataError(f"--data synthetic:N expects an integer image count, got {count!r}") from None
        return "synthetic", {"num_images": n}, None
    match = NAME_RE.match(text)
    if match and not Path(text).exists():
        name, root = match.groups()
        names = (registry or default_registry()).names("dataset")
        if name not in names:
            raise DataError(f"--data {text}: unknown dataset {name!r}; valid datasets: {', '.join(names)}")
        return name, {}, root
    if BARE_RE.match(text) and not Path(text).exists() and text in (registry or default_registry()).names("dataset"):
        return text, {}, None
    if _looks_like_shards(Path(text)):
        raise DataError(f"--data {text} looks like webdataset shards, not an image folder; name them --data wds:{text}")
    return "folder", {}, text


def _looks_like_shards(path: Path) -> bool:
    """A bare `--data` path that is meant as tar shards: a brace pattern, a .tar file, or a folder `d2it pack` wrote."""
    if path.is_dir():
        return (
            (path / "classes.json").is_file()
            and any(path.glob("*.tar"))
            and not any(p.is_dir() for p in path.iterdir())
        )
    return ("{" in path.name and "}" in path.name) or path.name.endswith(".tar") or "::" in str(path)


def open_dataset(
    spec: str, image_size: int, train: bool, options: dict | None = None, registry: Registry | None = None
):
    """Build the dataset named by a `--data` value (train: with random flips) through the registry."""
    registry = registry or default_registry()
    name, opts, root = parse_data(spec, registry)
    opts.update(options or {})
    if name == "folder" and root is not None and not Path(root).exists():
        raise DataError(f"data directory {root} does not exist")
    return registry.create(
        "dataset", name, opts, where=f"dataset {name}", root=root, image_size=image_size, train=train
    )


def data_options(spec: str, strict: bool, pairs=(), registry: Registry | None = None) -> dict:
    """Dataset options from `--strict-data` and `--data-option KEY=VALUE` pairs (JSON values where they parse)."""
    options = {}
    registry = registry or default_registry()
    name = parse_data(spec, registry)[0]
    if strict and name != "synthetic":
        field = fields_of(registry.get("dataset", name).config).get("strict")
        if field is None or field.type is not bool:  # `strict` is reserved only where a dataset declares it
            problem = f"--strict-data: dataset {name!r} has no bool option `strict`"
            raise DataError(reserved_error("dataset", "strict", problem))
        options["strict"] = True
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise DataError(f"--data-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def data_provenance(dataset) -> dict | None:
    """What a dataset says about its source (its optional `provenance()`: name, version, licence, ...), else None."""
    describe = getattr(dataset, "provenance", None)
    return describe() if callable(describe) else None


def first_items(dataset, count: int) -> list:
    """The first `count` items of a dataset: by index, or the start of a stream in stored order."""
    if not is_streaming(dataset):
        return [dataset[i] for i in range(min(count, len(dataset)))]
    dataset.configure(StreamSetup(endless=False, shuffle=False))
    return list(itertools.islice(iter(dataset), count))


def one_pass(dataset, rank: int, world: int):
    """A stream's every sample once, in stored order, this rank's share (for encode and thresholds)."""
    return dataset.configure(StreamSetup(rank=rank, world=world, endless=False, shuffle=False))


def dataset_classes(dataset) -> int:
    """Number of labels a dataset declares (`num_classes` or `classes`), else 1."""
    n = getattr(dataset, "num_classes", None)  # None: a stream whose labels are unknown up front
    if n is None:
        n = len(getattr(dataset, "classes", []) or [0])
    return max(1, int(n))


__all__ = [
    "FolderConfig",
    "FolderDataset",
    "HfConfig",
    "HfDataset",
    "OpenMojiConfig",
    "OpenMojiDataset",
    "StreamDataset",
    "SyntheticConfig",
    "SyntheticDataset",
    "WdsConfig",
    "WdsDataset",
    "data_options",
    "data_provenance",
    "first_items",
    "one_pass",
    "is_streaming",
    "dataset_classes",
    "open_dataset",
    "parse_data",
]
