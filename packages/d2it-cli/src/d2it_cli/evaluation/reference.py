"""Reference sets: precomputed statistics files (safetensors + JSON metadata) and their compatibility checks."""

import json
import os
from pathlib import Path

import numpy as np
import torch

from d2it.errors import DataError
from d2it.io import atomic_write_text, file_sha256, load_safetensors, save_safetensors
from d2it_cli.evaluation.metrics import FeatureSet

FORMAT = 1
META_KEY = "d2it.eval.reference"
STATS_SUFFIX = ".safetensors"


class Reference:
    """A reference set's features/statistics (and pixel metrics' accumulators) plus what produced them."""

    def __init__(self, features: FeatureSet, meta: dict, description: dict, pixels: dict | None = None):
        self.features = features
        self.meta = meta  # extractor, image size, source of the statistics
        self.description = description  # for result JSON: path, kind, hashes
        self.pixels = dict(pixels or {})  # pixel metric name -> its filled accumulator (from reference images)


def save_reference(path, features: FeatureSet, layers, meta: dict, keep_features: bool = True):
    """Write FID statistics (and features for KID/precision/recall) of `layers` with metadata, atomically."""
    path = Path(path)
    if path.suffix != STATS_SUFFIX:
        raise DataError(f"reference statistics are written as {STATS_SUFFIX}; got {path}")
    tensors = {}
    for layer in layers:
        stats = features.stats(layer)
        tensors[f"mu.{layer}"] = torch.from_numpy(np.ascontiguousarray(stats["mu"]))
        tensors[f"sigma.{layer}"] = torch.from_numpy(np.ascontiguousarray(stats["sigma"]))
        if keep_features:
            tensors[f"features.{layer}"] = features.layer(layer).contiguous()
    meta = {**meta, "format": FORMAT, "layers": sorted(layers), "has_features": keep_features}
    save_safetensors(tensors, path, {META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def load_reference(path) -> Reference:
    """Read a statistics file written by `save_reference`."""
    tensors, metadata = load_safetensors(path)
    if META_KEY not in metadata:
        raise DataError(f"{path} is not a d2it reference statistics file (no {META_KEY} metadata)")
    try:
        meta = json.loads(metadata[META_KEY])
    except ValueError as exc:
        raise DataError(f"{path} has damaged reference metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} has damaged reference metadata (not a JSON object)")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has reference format {meta.get('format')!r}; this d2it reads format {FORMAT}")
    stats, feats = {}, {}
    for name, t in tensors.items():
        kind, _, layer = name.partition(".")
        if kind in ("mu", "sigma"):
            stats.setdefault(layer, {})[kind] = t.numpy()
        elif kind == "features":
            feats[layer] = t
    description = {
        "kind": "statistics",
        "path": os.path.abspath(path),
        "file_sha256": file_sha256(path),
        "count": meta.get("count"),
        "image_size": meta.get("image_size"),
        "source": meta.get("source"),
        "fid_statistics": "statistics file",
    }
    return Reference(FeatureSet(feats, stats, count=meta.get("count") or 0), meta, description)


def check_compatible(ref: Reference, path, extractor, image_size, layers_stats, layers_features):
    """Refuse statistics made with another extractor, other weights, another image size or lacking layers."""
    ext = ref.meta.get("extractor", {})
    if ext.get("name") != extractor.name:
        raise DataError(
            f"reference statistics {path} were made with feature extractor {ext.get('name')!r}, "
            f"not {extractor.name!r}; recompute them with `d2it eval ref`"
        )
    if ext.get("weights_sha256") != extractor.weights_sha256:
        raise DataError(
            f"reference statistics {path} were made with extractor weights sha256 "
            f"{str(ext.get('weights_sha256'))[:12]}… but this run's weights are "
            f"{extractor.weights_sha256[:12]}… ({extractor.weights_path}); "
            f"recompute them with `d2it eval ref` or pass the same --inception-weights"
        )
    ref_size = list(ref.meta.get("image_size") or [])
    if ref_size != list(image_size):
        raise DataError(
            f"reference statistics {path} are of {_wh(ref_size)} images but the samples are {_wh(image_size)}"
        )
    for layer in layers_stats:
        if not ref.features.has_stats(layer):
            raise DataError(f"reference statistics {path} lack FID statistics of feature layer {layer!r}")
    for layer in layers_features:
        if layer not in ref.features.features:
            raise DataError(
                f"reference statistics {path} hold no features of layer {layer!r}, which KID and precision/recall "
                f"need; recompute them with `d2it eval ref` (without --no-features)"
            )


def _wh(size) -> str:
    return f"{size[1]}x{size[0]}" if len(size) == 2 else str(size)
