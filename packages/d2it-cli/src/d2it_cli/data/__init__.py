"""Datasets: the registered `folder` and `synthetic` datasets and `open_dataset` for `--data`."""

from pathlib import Path

from d2it.errors import DataError
from d2it.registry import Registry, default_registry
from d2it.spec import ComponentSpec
from d2it_cli.data.folder import FolderConfig, FolderDataset, make_folder
from d2it_cli.data.synthetic import SyntheticConfig, SyntheticDataset, make_synthetic


def parse_data(spec: str) -> tuple[str, dict, str | None]:
    """`--data` value -> (dataset name, options, root): a directory, `synthetic`, `synthetic:N` or `NAME:ROOT`."""
    text = str(spec).strip()
    if not text:
        raise DataError("--data needs a directory or 'synthetic'")
    if text == "synthetic" or text.startswith("synthetic:"):
        _, _, count = text.partition(":")
        if not count:
            return "synthetic", {}, None
        try:
            n = int(count)
        except ValueError:
            raise DataError(f"--data synthetic:N expects an integer image count, got {count!r}") from None
        return "synthetic", {"num_images": n}, None
    return "folder", {}, text


def open_dataset(
    spec: str, image_size: int, train: bool, options: dict | None = None, registry: Registry | None = None
):
    """Build the dataset named by a `--data` value (train: with random flips) through the registry."""
    registry = registry or default_registry()
    name, opts, root = parse_data(spec)
    opts.update(options or {})
    if root is not None and not Path(root).exists():
        raise DataError(f"data directory {root} does not exist")
    return registry.create(
        "dataset", name, opts, where=f"dataset {name}", root=root, image_size=image_size, train=train
    )


def dataset_classes(dataset) -> int:
    """Number of labels a dataset declares (`num_classes` or `classes`), else 1."""
    n = getattr(dataset, "num_classes", None)
    if n is None:
        n = len(getattr(dataset, "classes", []) or [0])
    return max(1, int(n))


DATASETS = [
    ComponentSpec(
        "folder",
        "dataset",
        make_folder,
        FolderConfig,
        summary="PNG/JPEG images in class subfolders (ImageFolder layout) or a flat folder",
    ),
    ComponentSpec(
        "synthetic",
        "dataset",
        make_synthetic,
        SyntheticConfig,
        summary="procedural images with smooth and detailed regions (no download)",
    ),
]

__all__ = [
    "DATASETS",
    "FolderConfig",
    "FolderDataset",
    "SyntheticConfig",
    "SyntheticDataset",
    "dataset_classes",
    "open_dataset",
    "parse_data",
]
