"""The `wds` dataset: webdataset tar shards (`<key>.jpg|png|webp` + optional `<key>.cls`), read as a stream.

`--data wds:/data/train-{000000..000127}.tar` (brace expansion; local paths, globs such as
`wds:shards/*.tar`, a folder that `d2it pack` wrote, `file:` URLs, or any URL the webdataset
library opens, e.g. `pipe:`, `https://`, `s3://` through its handlers). Shards are split
over ranks and data-loader workers and samples mixed in a shuffle buffer (see `stream.py`); a
sample whose image cannot be decoded is skipped and counted. `classes.json` beside the shards
(written by `d2it pack`) gives the class names and count.
"""

import glob
import importlib.util
import io
import json
from pathlib import Path

import attrs
import braceexpand

from d2it import checks
from d2it.errors import ConfigError, DataError
from d2it_cli.data.folder import center_crop, to_tensor
from d2it_cli.data.stream import StreamDataset
from d2it_cli.decode import open_rgb

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CLASSES_FILE = "classes.json"


@attrs.frozen
class WdsConfig:
    """Options of the `wds` dataset."""

    shuffle_buffer: int = 1000  # samples mixed per slot (0 = shard order only)
    num_classes: int | None = None  # default: classes.json beside the shards, else 1 + the largest label seen
    strict: bool = False  # fail on the first undecodable sample instead of skipping it
    length: int | None = None  # samples per epoch when known (default: classes.json's `count`); only for --epochs


def _folder_shards(folder: Path) -> list[str]:
    """The shards of a folder: those its classes.json's `pattern` names (as `d2it pack` writes it), else its *.tar."""
    meta = {}
    if (folder / CLASSES_FILE).is_file():
        try:
            meta = json.loads((folder / CLASSES_FILE).read_bytes().decode("utf-8"))
        except ValueError as exc:  # JSON or UTF-8
            raise DataError(f"{folder / CLASSES_FILE} is not valid JSON ({exc})") from None
    pattern = meta.get("pattern") if isinstance(meta, dict) else None
    if isinstance(pattern, str) and pattern and "/" not in pattern and "\\" not in pattern:
        return [str(folder / name) for name in braceexpand.braceexpand(pattern)]
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if not shards:
        raise DataError(f"--data wds:{folder}: the folder holds no .tar shards")
    return shards


def _expand_one(url: str) -> list[str]:
    """One brace-expanded URL: a folder's shards, a local glob's matches (sorted), or the URL itself."""
    if url.startswith("file:"):  # file:///data/x.tar and file:/data/x.tar are local paths
        url = url[len("file://") :] if url.startswith("file://") else url[len("file:") :]
    if not _is_local(url):
        return [url]
    if Path(url).is_dir():
        return _folder_shards(Path(url))
    if any(c in url for c in "*?["):  # a glob
        matches = sorted(glob.glob(url))
        if not matches:
            raise DataError(f"--data wds:{url} matches no files")
        return matches
    return [url]


def expand_shards(pattern: str) -> list[str]:
    """Shard URLs from a pattern: braces, local globs (`shards/*.tar`), a folder `d2it pack` wrote, `file:` URLs.

    Several patterns may be joined with `::`.
    """
    parts = [u for part in pattern.split("::") for u in braceexpand.braceexpand(part.strip()) if u]
    urls = [u for part in parts for u in _expand_one(part)]
    if not urls:
        raise DataError(f"--data wds:{pattern} names no shards")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _check_classes_file(meta, file):
    """Refuse a classes.json whose entries the reader uses have the wrong type (as `d2it pack` writes them)."""
    try:
        if not isinstance(meta, dict):
            raise ConfigError(f"{file} must hold a JSON object, not a {type(meta).__name__}")
        classes = checks.field(meta, "classes", str(file), types=(list,), optional=True)
        if classes is not None and not all(isinstance(c, str) for c in classes):
            raise ConfigError(f"{file} entry 'classes' must be a list of names")
        checks.field(meta, "count", str(file), low=1, integer=True, optional=True)
    except ConfigError as exc:
        raise DataError(f"malformed shard manifest: {exc}") from None


class WdsDataset(StreamDataset):
    """Samples of webdataset tar shards as (image in [-1, 1], label)."""

    def __init__(self, pattern: str, image_size: int, train: bool = True, config: WdsConfig | None = None):
        config = config or WdsConfig()
        super().__init__(image_size, train=train, shuffle_buffer=config.shuffle_buffer, strict=config.strict)
        if importlib.util.find_spec("webdataset") is None:
            raise DataError(
                "--data wds: needs the webdataset package; install it with pip install 'd2it-cli[webdataset]'"
            )
        self.pattern = pattern
        self.urls = expand_shards(pattern)
        local = [u for u in self.urls if _is_local(u)]
        missing = [u for u in local if not Path(u).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.urls)} shard(s) do not exist, the first is {missing[0]}")
        meta = {}
        if _is_local(self.urls[0]):
            file = Path(self.urls[0]).parent / CLASSES_FILE
            if file.is_file():
                try:
                    meta = json.loads(file.read_bytes().decode("utf-8"))
                except ValueError as exc:  # JSON or UTF-8
                    raise DataError(f"{file} is not valid JSON ({exc})") from None
                _check_classes_file(meta, file)
        self.classes = list(meta.get("classes", []))
        known = config.num_classes or len(self.classes)
        self.num_classes = int(known) if known else None  # None: labels are not range-checked
        self.length = config.length or meta.get("count")

    def units(self):
        return self.urls

    def read(self, url):
        def report(exc):  # a truncated or unreadable shard ends that shard, the stream goes on
            self.skipped += 1
            if self.strict:
                raise DataError(f"shard {url} cannot be read ({exc})")
            return False

        import webdataset  # seconds to import: only when shards are read, not for every d2it command

        yield from webdataset.tariterators.tarfile_samples([{"url": url}], handler=report)

    def describe_units(self):
        return f"wds:{self.pattern}"

    def describe(self, raw):
        return f"sample {raw.get('__key__')} of {raw.get('__url__')}"

    def decode(self, raw):
        key = next((k for k in IMAGE_KEYS if k in raw), None)
        if key is None:
            raise KeyError(f"no image ({', '.join(IMAGE_KEYS)}) in the sample")
        image = open_rgb(io.BytesIO(raw[key]), self.describe(raw))  # the folder route's decoder
        label = int(raw["cls"].decode().strip()) if "cls" in raw else 0
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            raise ValueError(f"class index {label} outside the dataset's {self.num_classes} classes")
        return to_tensor(center_crop(image, self.image_size)), label


def make_wds(config: WdsConfig, *, root, image_size: int, train: bool = True) -> WdsDataset:
    """Registry factory of the `wds` dataset (`root` is the shard pattern)."""
    if not root:
        raise DataError("the wds dataset needs shards, e.g. --data wds:/data/train-{000000..000127}.tar")
    return WdsDataset(root, image_size, train=train, config=config)
