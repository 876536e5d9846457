"""Reading the latent cache that `d2it encode` writes: `LatentCache`, the stage-2 trainers' dataset.

The cache's layout and manifest are described in `d2it_cli.cache`, which writes it.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from d2it import checks
from d2it.errors import CheckpointError, ConfigError, DataError
from d2it_cli.cache_layout import unpack_used

MANIFEST = "manifest.json"
FORMAT = 1
VERSIONS = 2  # the image and its horizontal flip


def shard_name(rank: int, index: int) -> str:
    """File name of shard `index` written by `rank`."""
    return f"shard-r{rank:03d}-{index:05d}.safetensors"


def read_manifest(path) -> dict:
    """The manifest of a cache directory; a missing or foreign one raises DataError."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"latent cache {path} does not exist")
    file = path / MANIFEST
    if not file.is_file():
        raise DataError(f"{path} is not a complete latent cache: it has no {MANIFEST} (run d2it encode)")
    try:
        doc = json.loads(file.read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSON or UTF-8
        raise DataError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{file} is not a cache manifest (a JSON {type(doc).__name__}, not an object)")
    if doc.get("format") != FORMAT:
        raise DataError(f"{file} has cache format {doc.get('format')!r}; this d2it reads format {FORMAT}")
    try:
        check_manifest(doc, path, str(file))
    except ConfigError as exc:
        raise DataError(f"damaged latent cache: {exc}") from None
    return doc


def check_manifest(doc: dict, folder, where: str):
    """Types and ranges of every manifest entry the readers use; shard files must lie inside the cache."""
    checks.field(doc, "grains", where, low=1, integer=True)
    checks.field(doc, "count", where, low=0, integer=True)
    checks.field(doc, "posterior", where, choices=("gaussian", "codes"))
    checks.field(doc, "vae_sha256", where, types=(str,))
    checks.field(doc, "latent_scale", where, low=0, optional=True)
    if doc.get("latent_scale") is not None and not doc["latent_scale"] > 0:
        raise ConfigError(f"{where} entry 'latent_scale' must be a finite number > 0, got {doc['latent_scale']!r}")
    checks.field(doc, "num_classes", where, low=1, integer=True, optional=True)
    shards = checks.field(doc, "shards", where, types=(list,))
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise ConfigError(f"{where} shard {i} must be an object, got {shard!r}")
        checks.inside(folder, checks.field(shard, "file", f"{where} shard {i}", types=(str,)), f"{where} shard {i}")
        checks.field(shard, "count", f"{where} shard {i}", low=0, integer=True)


class LatentCache(torch.utils.data.Dataset):
    """Items {params: [per grain], grain_map, label}: one of the two stored versions (image or flip) per access."""

    def __init__(self, path, random_flip: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.random_flip = random_flip
        self.grains = int(self.manifest["grains"])
        self.posterior = self.manifest["posterior"]
        self.layout = self.manifest.get("layout", "all")
        self._starts: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        self.shards = [(self.path / s["file"], int(s["count"])) for s in self.manifest["shards"]]
        for file, _ in self.shards:
            if not file.is_file():
                raise DataError(f"latent cache {self.path} lacks shard {file.name}")
            try:  # the header only: a damaged shard fails here, not inside a data-loading worker
                with safe_open(str(file), framework="pt") as f:
                    keys = set(f.keys())
            except (SafetensorError, OSError) as exc:
                raise DataError(f"latent cache shard {file} cannot be read ({exc})") from None
            missing = sorted(set(self.required_tensors()) - keys)
            if missing:
                raise DataError(f"latent cache shard {file} is damaged: it lacks the tensor {missing[0]!r}")
        self.offsets = []
        total = 0
        for _, count in self.shards:
            self.offsets.append(total)
            total += count
        self.count = total
        if total != int(self.manifest["count"]):
            raise DataError(
                f"latent cache {self.path} holds {total} images but its manifest says {self.manifest['count']}"
            )
        self._handles = {}

    def required_tensors(self) -> list[str]:
        """Names every shard of this cache's layout holds."""
        rows = [f"used.{g}" for g in range(self.grains)] + [f"count.{g}" for g in range(self.grains)]
        if self.layout != "used":
            rows = [f"params.{g}" for g in range(self.grains)]
        return [*rows, "grain_map", "label"]

    def _check_grains(self, shard: int, row: int, grain_map: torch.Tensor):
        """Refuse a grain map with a value outside 0..k-1, naming the shard."""
        if grain_map.numel() and not 0 <= int(grain_map.min()) <= int(grain_map.max()) < self.grains:
            bad = int(grain_map.max()) if int(grain_map.max()) >= self.grains else int(grain_map.min())
            raise DataError(
                f"latent cache shard {self.shards[shard][0]} is damaged: image {row} has grain {bad} in its grain "
                f"map, outside 0..{self.grains - 1}"
            )

    def _check_item(self, shard: int, row: int, item: dict) -> dict:
        """Refuse an item whose grain map, label or parameters a damaged shard made impossible, naming the shard."""
        file, label = self.shards[shard][0], int(item["label"])
        if not 0 <= label < self.num_classes:
            raise DataError(
                f"latent cache shard {file} is damaged: image {row} has label {label}, outside the cache's "
                f"{self.num_classes} classes"
            )
        if not all(bool(torch.isfinite(p).all()) for p in item["params"]):
            raise DataError(f"latent cache shard {file} is damaged: image {row} has NaN or infinite latents")
        return item

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles do not cross process boundaries
        state["_starts"] = {}
        return state

    @property
    def vae_sha256(self) -> str:
        """SHA-256 of the DVAE weights that produced the cache."""
        return self.manifest["vae_sha256"]

    @property
    def num_classes(self) -> int:
        """Number of labels of the encoded dataset."""
        return int(self.manifest.get("num_classes", 1))

    def provenance(self) -> dict | None:
        """The encoded dataset's own description (name, version, licence, ...), where it gave one."""
        return self.manifest.get("data_provenance")

    def check(self, vae_hash: str):
        """Refuse a cache that other DVAE weights produced."""
        if vae_hash != self.vae_sha256:
            raise CheckpointError(
                f"latent cache {self.path} was encoded with other DVAE weights (sha256 {self.vae_sha256[:12]}, "
                f"the system's are {vae_hash[:12]}); run d2it encode again"
            )

    def __len__(self) -> int:
        return self.count

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        lo, hi = 0, len(self.offsets) - 1
        while lo < hi:  # the last shard whose offset is <= index
            mid = (lo + hi + 1) // 2
            if self.offsets[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo, index - self.offsets[lo]

    def _handle(self, shard: int):
        if shard not in self._handles:
            file = self.shards[shard][0]
            try:
                self._handles[shard] = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise DataError(f"latent cache shard {file} cannot be read ({exc})") from None
        return self._handles[shard]

    def read(self, index: int, version: int) -> dict:
        """Item `index` in version 0 (image) or 1 (its flip)."""
        shard, row = self._locate(int(index))
        f = self._handle(shard)
        grain_map = f.get_slice("grain_map")[row : row + 1][0, version].long()
        self._check_grains(shard, row, grain_map)
        if self.layout == "used":
            params = unpack_used(
                [self._used_rows(shard, g, row, version) for g in range(self.grains)],
                grain_map,
                self.manifest["shapes"]["params"],
            )
            params = [p.float() for p in params]
        else:
            params = [f.get_slice(f"params.{g}")[row : row + 1][0, version].float() for g in range(self.grains)]
        label = f.get_slice("label")[row : row + 1][0].long()
        return self._check_item(shard, row, {"params": params, "grain_map": grain_map, "label": label})

    def _used_rows(self, shard: int, grain: int, row: int, version: int) -> torch.Tensor:
        """Grain `grain`'s stored rows of one image version in a `used` cache."""
        if (shard, grain) not in self._starts:
            counts = self._handle(shard).get_tensor(f"count.{grain}").reshape(-1).tolist()
            starts = [0]
            for c in counts[:-1]:
                starts.append(starts[-1] + int(c))
            self._starts[(shard, grain)] = (starts, counts)
        starts, counts = self._starts[(shard, grain)]
        k = row * VERSIONS + version
        table = self._handle(shard).get_slice(f"used.{grain}")
        if counts[k] == 0:
            return torch.zeros(0, table.get_shape()[1])
        return table[starts[k] : starts[k] + counts[k]]

    def __getitem__(self, index: int) -> dict:
        version = int(torch.randint(VERSIONS, ())) if self.random_flip else 0
        return self.read(index, version)
