"""The latent cache written by `d2it encode` and read by the stage-2 trainers.

A cache directory holds `manifest.json` (written last: a cache without it is incomplete) and
safetensors shards. Each shard stores, for n images, every grain's posterior parameters on that
grain's full grid (KL: mean and log-variance; VQ: codes) for the image and for its horizontal
flip, the grain maps of both, the labels and the dataset indices:

    params.<g>   (n, 2, P, h_g, w_g)   g = 0 (coarsest) .. k-1, version 0 = image, 1 = flip
    grain_map    (n, 2, h, w) uint8
    label        (n,) int64
    index        (n,) int64

Because every grain is stored everywhere, a latent can be laid out for any grain map (the
`--grain-source random` ablation). Latents are sampled from the stored posterior at every step.
`d2it encode --grains used` stores only each region's own grain instead (`cache_layout.py`), and
`--dtype bf16` (the default) the parameters in bfloat16.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from d2it import checks
from d2it.errors import CheckpointError, ConfigError, DataError
from d2it.layout import neighbour_copy
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


def sample_posterior(params, grain_map: torch.Tensor, posterior: str = "gaussian", generator=None, mode: bool = False):
    """Copied-layout latent from per-grain parameters: Gaussian draws (or means), or the codes themselves."""
    codes = []
    for p in params:
        if posterior == "gaussian":
            mean, logvar = p.float().chunk(2, dim=1)
            if mode:
                codes.append(mean)
            else:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                codes.append(mean + torch.exp(0.5 * logvar) * eps)
        else:
            codes.append(p.float())
    return neighbour_copy(codes, grain_map.to(codes[0].device))


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
                with safe_open(str(file), framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise DataError(f"latent cache shard {file} cannot be read ({exc})") from None
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
        return {"params": params, "grain_map": grain_map, "label": label}

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

    def sample(self, params, grain_map, generator=None, mode: bool = False, vae=None) -> torch.Tensor:
        """The copied-layout latent for a batch: the VAE's `sample_latent` when given, else drawn from `params` here."""
        if vae is not None:
            return vae.sample_latent(params, grain_map, generator=generator, mode=mode)
        return sample_posterior(params, grain_map, self.posterior, generator=generator, mode=mode)
