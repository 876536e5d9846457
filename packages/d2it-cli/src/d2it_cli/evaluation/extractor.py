"""Feature extractors from torch-fidelity's registry, with offline-safe weights and feature accumulation."""

import hashlib
import socket
import tempfile
import urllib.error
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from d2it.errors import D2itError, DataError
from d2it.io import file_sha256, state_sha256
from d2it.progress import progress_bar

INCEPTION = "inception-v3-compat"
DOWNLOAD_TIMEOUT_S = 30
INCEPTION_SHA_PREFIX = URL_INCEPTION_V3.rsplit("-", 1)[-1].split(".")[0]  # torch.hub's hash-prefix convention


def inception_cache_path() -> Path:
    """Where torch-fidelity (torch.hub) caches the Inception weights it downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def _download(url: str, dst: Path):
    """Fetch `url` to `dst` with torch.hub, failing after a bounded wait when there is no network."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=False)
    finally:
        socket.setdefaulttimeout(old)


def check_plain(path, what: str = "feature extractor weights") -> Path:
    """Refuse a missing file or one that is not plain tensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} do not exist")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise DataError(f"{what} {path} are not a plain state dict ({type(exc).__name__})") from None
    return path


@contextmanager
def plain_copy(path):
    """A private copy of `path` rewritten from its tensors alone (loaded with weights_only=True).

    torch-fidelity loads its extractor weights with `weights_only=False`; it is handed this copy,
    which holds nothing but the tensors we read, so a pickle planted in `path` never runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign, truncated or malicious files
        raise DataError(f"feature extractor weights {path} are not a plain state dict ({type(exc).__name__})") from None
    with tempfile.TemporaryDirectory(prefix="d2it-weights-") as tmp:
        copy = Path(tmp) / "weights.pt"
        torch.save(state, copy)
        yield copy


def resolve_weights(name: str, weights=None) -> Path | None:
    """The local weights file for extractor `name`: the given path, torch-fidelity's cache, or a download."""
    if weights:
        return check_plain(weights)
    if name != INCEPTION:
        return None
    cached = inception_cache_path()
    if cached.is_file():
        return check_plain(cached)
    try:
        _download(URL_INCEPTION_V3, cached)
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise D2itError(
            f"the FID Inception weights are not in torch-fidelity's cache and cannot be downloaded ({exc}); "
            f"fetch {URL_INCEPTION_V3} on a machine with internet and put it at {cached} or pass "
            f"--inception-weights PATH"
        ) from None
    return cached


def extractor_class(name: str):
    """The torch-fidelity feature extractor class registered as `name`."""
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        valid = ", ".join(sorted(FEATURE_EXTRACTORS_REGISTRY))
        raise D2itError(f"unknown feature extractor {name!r}; torch-fidelity has {valid}")
    return FEATURE_EXTRACTORS_REGISTRY[name]


class Extractor:
    """A torch-fidelity feature extractor plus what identifies it (name, weights file and hash, layers)."""

    def __init__(self, name: str, layers, weights=None, device="cpu"):
        self.name = name
        self.cls = extractor_class(name)
        self.layers = sorted(set(layers))
        self.weights_path = resolve_weights(name, weights)
        if self.weights_path is None:
            self.module = create_feature_extractor(name, self.layers, cuda=False, verbose=False)
        else:
            with plain_copy(self.weights_path) as plain:
                self.module = create_feature_extractor(
                    name, self.layers, cuda=False, verbose=False, feature_extractor_weights_path=str(plain)
                )
        self.module.to(device)
        self.device = torch.device(device)
        if self.weights_path is not None:
            self.weights_sha256 = file_sha256(self.weights_path)
        else:  # weights built into the extractor: hash the loaded tensors instead
            self.weights_sha256 = state_sha256(self.module.state_dict())

    def default_layer(self, metric: str) -> str:
        """The extractor's feature layer for a torch-fidelity metric (isc, fid, kid, prc)."""
        return self.cls.get_default_feature_layer_for_metric(metric)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a uint8 (B, 3, H, W) batch, per layer, on the CPU."""
        feats = self.module(images.to(self.device))
        return {k: v.detach().float().cpu() for k, v in self.module.convert_features_tuple_to_dict(feats).items()}

    def describe(self) -> dict:
        """Name, weights file and SHA-256 that determine the features."""
        return {
            "name": self.name,
            "weights_path": str(self.weights_path.resolve()) if self.weights_path else None,
            "weights_sha256": self.weights_sha256,
            "weights_hashed": "file" if self.weights_path else "state_dict",
            "weights_official": self.name == INCEPTION and self.weights_sha256.startswith(INCEPTION_SHA_PREFIX),
        }


class FeatureAccumulator:
    """Collects features and a SHA-256 of the uint8 HWC pixels of the images fed to it, in order."""

    def __init__(self, extractor: Extractor):
        self.extractor = extractor
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.hash = hashlib.sha256()
        self.count = 0

    def add(self, images: torch.Tensor):
        """Add a uint8 (B, 3, H, W) batch."""
        if images.dtype != torch.uint8:
            raise DataError(f"feature extraction expects uint8 images, got {images.dtype}")
        self.hash.update(images.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        for k, v in self.extractor(images).items():
            self.parts.setdefault(k, []).append(v)
        self.count += images.shape[0]

    def features(self) -> dict[str, torch.Tensor]:
        """Layer -> (N, D) features."""
        return {k: torch.cat(v) for k, v in self.parts.items()}

    def pixel_sha256(self) -> str:
        """Hex SHA-256 of every image's uint8 HWC pixels, in order."""
        return self.hash.hexdigest()


def _worker_message(exc: Exception) -> str:
    """The original one-line message of a DataError re-raised by a DataLoader worker."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
    return last.split("DataError: ", 1)[-1]


def extract(extractor: Extractor, images, batch_size: int = 64, workers: int = 0, progress: bool = False):
    """Run `extractor` over a dataset of uint8 CHW tensors; returns the filled FeatureAccumulator."""
    acc = FeatureAccumulator(extractor)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers)
    try:
        with progress_bar(total=len(images), enabled=progress, unit="img", desc="features", leave=False) as bar:
            for batch in loader:
                acc.add(batch)
                bar.update(batch.shape[0])
    except DataError as exc:
        raise DataError(_worker_message(exc)) from None
    return acc
