"""The `hf` dataset: a Hugging Face `datasets` table of images and labels (`--data hf:PATH_OR_NAME[:split]`).

PATH may be a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or local data
files (parquet, arrow, an image folder) that `datasets.load_dataset` reads offline; anything else is
treated as a Hub name, which needs the network (and is refused in one sentence without it). Rows
are read by index from the memory-mapped Arrow table; images are decoded here, so a corrupt one is
skipped and counted like in the folder dataset.
"""

import importlib.util
import io
import logging
import re
from pathlib import Path

import attrs
import numpy as np
import torch
from PIL import Image

from d2it.errors import DataError
from d2it_cli.data.folder import center_crop, random_flip, to_tensor
from d2it_cli.decode import open_rgb, to_rgb

log = logging.getLogger("d2it.data")

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "pixel_values")
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
LABEL_COLUMNS = ("label", "labels", "class", "cls", "fine_label")


@attrs.frozen
class HfConfig:
    """Options of the `hf` dataset."""

    image_column: str | None = None  # default: the first Image feature, else one of IMAGE_COLUMNS
    label_column: str | None = None  # default: `label`-like column if any, else no labels (class 0)
    split: str | None = None  # overrides the `:split` suffix (default train)
    strict: bool = False


def split_spec(text: str) -> tuple[str, str | None]:
    """`PATH_OR_NAME[:split]` -> (path or name, split or None); a trailing `:split` is taken only when it is a name."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and "/" not in tail and not Path(text).exists():
        return head, tail
    return text, None


def _load(source: str, split: str, explicit: bool = True):
    """The `datasets.Dataset` of `source` (save_to_disk folder, local files or Hub name) and `split`.

    A split that is not there is an error listing those that are (`explicit`: it was asked for, not the default).
    """
    if importlib.util.find_spec("datasets") is None:
        raise DataError("--data hf: needs the datasets package; install it with pip install 'd2it-cli[hf]'")
    import datasets  # seconds to import: only when an hf dataset is opened, not for every d2it command

    path = Path(source)
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{path} is not a readable save_to_disk folder ({exc})") from None
    else:
        local = path.exists()
        try:
            if path.is_file():  # one data file: the packaged builder of its type
                builder = FILE_BUILDERS.get(path.suffix.lower())
                if builder is None:
                    raise DataError(
                        f"--data hf:{source}: cannot read {path.suffix} files; use {', '.join(FILE_BUILDERS)}"
                    )
                loaded = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
            else:
                loaded = datasets.load_dataset(str(path) if local else source, split=split)
        except DataError:
            raise
        except ValueError as exc:
            found = re.search(r"Unknown split \"?([^\".]*)\"?\. Should be one of (\[.*?\])", str(exc))
            if found is None:
                raise DataError(f"--data hf:{source} could not be read by datasets (ValueError: {exc})") from None
            names = ", ".join(re.findall(r"'([^']*)'", found.group(2)))
            raise DataError(f"--data hf:{source} has no split {split!r}; it has {names}") from None
        except Exception as exc:  # offline, unknown name, bad files: the library raises many types
            if local:
                raise DataError(
                    f"--data hf:{source} could not be read by datasets ({type(exc).__name__}: {exc})"
                ) from None
            raise DataError(
                f"--data hf:{source} is neither a local folder nor a file and could not be loaded from the Hugging "
                f"Face Hub ({type(exc).__name__}); download it with network access or give a save_to_disk folder"
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"--data hf:{source} has no split {split!r}; it has {', '.join(sorted(loaded))}")
        loaded = loaded[split]
    elif explicit and str(loaded.split or "train") != split:  # one table: the split asked for must be its own
        has = f"only the split {str(loaded.split)!r}" if loaded.split else "one table without named splits"
        raise DataError(f"--data hf:{source} has no split {split!r}; it has {has}")
    return loaded


class HfDataset(torch.utils.data.Dataset):
    """Rows of a Hugging Face dataset as (image in [-1, 1], label)."""

    def __init__(self, spec: str, image_size: int, train: bool = True, config: HfConfig | None = None):
        config = config or HfConfig()
        source, split = split_spec(spec)
        self.source, self.split = source, config.split or split or "train"
        self.image_size, self.train, self.strict = int(image_size), train, config.strict
        import datasets  # see _load

        table = _load(source, self.split, explicit=bool(config.split or split))
        features = table.features
        self.image_column = config.image_column or next(
            (k for k, f in features.items() if isinstance(f, datasets.Image)),
            next((k for k in IMAGE_COLUMNS if k in features), None),
        )
        if self.image_column not in features:
            raise DataError(
                f"--data hf:{spec} has no image column {self.image_column!r}; its columns are {', '.join(features)}"
            )
        self.label_column = config.label_column or next((k for k in LABEL_COLUMNS if k in features), None)
        if self.label_column is not None and self.label_column not in features:
            raise DataError(
                f"--data hf:{spec} has no label column {self.label_column!r}; its columns are {', '.join(features)}"
            )
        if isinstance(features[self.image_column], datasets.Image):
            table = table.cast_column(self.image_column, datasets.Image(decode=False))  # decoded here, errors counted
        label_feature = features.get(self.label_column) if self.label_column else None
        if isinstance(label_feature, datasets.ClassLabel):
            self.classes = list(label_feature.names)
        elif self.label_column is not None:
            self.classes = [str(c) for c in range(int(max(table[self.label_column])) + 1)] if len(table) else []
        else:
            self.classes = []
        self.table = table.select_columns([c for c in (self.image_column, self.label_column) if c])
        if len(self.table) == 0:
            raise DataError(f"--data hf:{spec} split {self.split} has no rows")
        self.skipped: list[int] = []

    @property
    def num_classes(self) -> int:
        """Number of labels (1 without a label column)."""
        return max(1, len(self.classes))

    def __len__(self) -> int:
        return len(self.table)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Row `index` decoded, resized and centre-cropped (no flip)."""
        row = self.table[int(index)]
        value = row[self.image_column]
        if isinstance(value, dict):  # Image(decode=False): bytes or a path
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
            image = open_rgb(source, f"row {index} of hf:{self.source}")  # the folder route's decoder
        elif isinstance(value, Image.Image):
            image = to_rgb(value, f"row {index} of hf:{self.source}")
        else:
            image = to_rgb(Image.fromarray(np.asarray(value, dtype=np.uint8)), f"row {index} of hf:{self.source}")
        label = int(row[self.label_column]) if self.label_column else 0
        return to_tensor(center_crop(image, self.image_size)), label

    def __getitem__(self, index: int):
        n = len(self.table)
        for offset in range(n):
            i = (int(index) + offset) % n
            try:
                x, label = self.load(i)
            except (OSError, ValueError, SyntaxError, TypeError) as exc:
                if self.strict:
                    raise DataError(f"row {i} of hf:{self.source} cannot be decoded ({exc})") from None
                if i not in self.skipped:
                    self.skipped.append(i)
                    log.warning(
                        "skipped corrupt row %d of hf:%s (%s); %d skipped so far",
                        i,
                        self.source,
                        exc,
                        len(self.skipped),
                    )
                continue
            return (random_flip(x) if self.train else x), label
        raise DataError(f"none of the rows of hf:{self.source} can be decoded")


def make_hf(config: HfConfig, *, root, image_size: int, train: bool = True) -> HfDataset:
    """Registry factory of the `hf` dataset (`root` is PATH_OR_NAME[:split])."""
    if not root:
        raise DataError("the hf dataset needs a path or name, e.g. --data hf:/data/imagenet_hf:train")
    return HfDataset(root, image_size, train=train, config=config)
