"""Feature extractors from torch-fidelity's registry, loaded as plain tensors, with feature accumulation.

Only extractors whose weights are plain state dicts are offered: torch-fidelity's own module code is
built with tensors read by `d2it.weights` (never by torch-fidelity, torchvision or torch.hub). CLIP
(published as TorchScript archives) and DINOv2 (built by running a torch.hub repository's
`hubconf.py`) cannot be loaded that way and are not offered. Extractors that other code registers
with torch-fidelity are offered too; they build themselves, and a weights file reaches them as tensors.
"""

import hashlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from d2it import weights as pretrained
from d2it.errors import D2itError, DataError
from d2it.io import file_sha256, state_sha256
from d2it.progress import progress_bar

INCEPTION = "inception-v3-compat"
OPTION = "--inception-weights"
OFFERED = {INCEPTION: URL_INCEPTION_V3, "vgg16": pretrained.VGG16_URL}  # name -> the file torch-fidelity would fetch
WHAT = {INCEPTION: "FID Inception weights", "vgg16": "VGG16 feature extractor weights"}
NOT_OFFERED = {  # torch-fidelity's other families, and why
    "clip": "torch-fidelity loads CLIP from a TorchScript archive, which cannot be read as plain tensors",
    "dinov2": "torch-fidelity builds DINOv2 by running a torch.hub repository's code",
}


def _sha_prefix(url: str) -> str:
    """The SHA-256 prefix torch.hub file names carry (`name-<prefix>.pth`)."""
    return url.rsplit("-", 1)[-1].split(".")[0]


def inception_cache_path() -> Path:
    """Where torch-fidelity (torch.hub) caches the Inception weights it downloads."""
    return pretrained.hub_cache_path(URL_INCEPTION_V3)


def _torch_fidelity_own(cls) -> bool:
    """True for an extractor class that torch-fidelity itself defines."""
    return cls.__module__.split(".")[0] == "torch_fidelity"


def offered() -> list[str]:
    """The feature extractor names `--feature-extractor` accepts."""
    others = [n for n, cls in FEATURE_EXTRACTORS_REGISTRY.items() if not _torch_fidelity_own(cls)]
    return sorted({*OFFERED, *others})


def extractor_class(name: str):
    """The torch-fidelity feature extractor class registered as `name`, if it is offered."""
    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    valid = ", ".join(offered())
    if cls is not None and _torch_fidelity_own(cls) and name not in OFFERED:
        reason = NOT_OFFERED.get(name.split("-")[0], "its weights cannot be read as plain tensors")
        raise D2itError(f"feature extractor {name!r} is not offered ({reason}); valid: {valid}")
    if cls is None:
        raise D2itError(f"unknown feature extractor {name!r}; valid: {valid}")
    return cls


def load_weights(name: str, weights=None) -> tuple[Path | None, dict | None]:
    """(file, plain tensors) of extractor `name`'s weights: the given file, else torch's cache (downloaded once)."""
    if weights:
        path = Path(weights)
    elif name in OFFERED:
        path = pretrained.hub_file(OFFERED[name], WHAT[name], OPTION)
    else:  # an extractor registered by other code, without a weights file: it builds itself
        return None, None
    return path, pretrained.load_plain(path, "feature extractor weights file")


class Extractor:
    """A torch-fidelity feature extractor plus what identifies it (name, weights file and hash, layers)."""

    def __init__(self, name: str, layers, weights=None, device="cpu"):
        self.name = name
        self.cls = extractor_class(name)
        self.layers = sorted(set(layers))
        self.weights_path, state = load_weights(name, weights)
        where = f"weights {self.weights_path}" if self.weights_path else "its own weights"
        self.module = pretrained.fidelity_extractor(name, self.layers, state, where)
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
            "weights_official": self.name in OFFERED
            and self.weights_sha256.startswith(_sha_prefix(OFFERED[self.name])),
        }


class FeatureAccumulator:
    """Collects features (none without an extractor) and a SHA-256 of the uint8 HWC pixels fed to it, in order."""

    def __init__(self, extractor: Extractor | None):
        self.extractor = extractor
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.hash = hashlib.sha256()
        self.count = 0

    def add(self, images: torch.Tensor):
        """Add a uint8 (B, 3, H, W) batch."""
        if images.dtype != torch.uint8:
            raise DataError(f"feature extraction expects uint8 images, got {images.dtype}")
        self.hash.update(images.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        for k, v in (self.extractor(images) if self.extractor is not None else {}).items():
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


def extract(
    extractor: Extractor | None, images, batch_size: int = 64, workers: int = 0, progress: bool = False, sinks=()
):
    """Run `extractor` (None: hash only) over a dataset of uint8 CHW tensors, feeding each batch to `sinks` too
    (pixel metrics' accumulators); returns the filled FeatureAccumulator."""
    acc = FeatureAccumulator(extractor)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers)
    try:
        with progress_bar(total=len(images), enabled=progress, unit="img", desc="features", leave=False) as bar:
            for batch in loader:
                acc.add(batch)
                for sink in sinks:
                    sink.add(batch)
                bar.update(batch.shape[0])
    except DataError as exc:
        raise DataError(_worker_message(exc)) from None
    return acc
