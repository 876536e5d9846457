"""Scoring generated images against a reference: metric look-up, feature extraction, provenance."""

import importlib.metadata as md
from pathlib import Path

import attrs

from d2it.config import config_to_dict, parse_sets
from d2it.errors import D2itError, DataError
from d2it.registry import default_registry
from d2it.system import package_versions
from d2it_cli.evaluation.extractor import INCEPTION, Extractor, extract, extractor_class
from d2it_cli.evaluation.images import ImageSet, open_images
from d2it_cli.evaluation.metrics import FeatureMetric, FeatureSet, PixelMetric
from d2it_cli.evaluation.reference import STATS_SUFFIX, Reference, check_compatible, load_reference, save_reference

GEN_METRICS = ("fid", "isc", "kid", "prc")  # the default of `eval gen --metrics`
GEN_ALLOWED = (*GEN_METRICS, "swd")  # swd: pixels only, opt-in (its descriptors take memory)
THIRD_PARTY = ("torch", "torchvision", "torch-fidelity", "lpips", "numpy", "pillow", "scipy")
ADM_LAYER = "2048"  # ADM's reference batches hold pool3 statistics


def versions() -> dict[str, str]:
    """Versions of every package that can change a metric's value."""
    out = {}
    for dist in THIRD_PARTY:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {**out, **package_versions()}


@attrs.frozen
class Settings:
    """Everything besides the inputs that determines a score."""

    extractor: str = INCEPTION
    weights: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 2020
    workers: int = 0
    resize: str = "none"
    image_size: int | None = None
    progress: bool = False


def parse_metrics(text: str, allowed=GEN_ALLOWED) -> list[str]:
    """Comma-separated metric names, validated against `allowed`."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise D2itError("--metrics names no metric")
    for n in names:
        if n not in allowed:
            raise D2itError(f"metric {n!r} cannot be used here; valid: {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def make_metrics(registry, names, sets=(), **context) -> dict:
    """Name -> metric object from the registry (None: the default one), with `--set name.option=value` overrides."""
    registry = registry or default_registry()
    overrides = parse_sets(sets)
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise D2itError(f"--set names metric {stray[0]!r}, which is not being computed")
    out = {}
    for n in names:
        spec = registry.get("metric", n)
        out[n] = registry.create("metric", n, overrides.get(n), where=n, **context)
        out[n].options = config_to_dict(spec.make_config(overrides.get(n)))
    return out


def build_extractor(metrics: dict, settings: Settings) -> tuple[Extractor | None, dict]:
    """The extractor for these metrics (None when none reads features) and metric name -> feature layer."""
    if not any(isinstance(m, FeatureMetric) for m in metrics.values()):
        return None, {}
    cls = extractor_class(settings.extractor)
    layers = {n: m.layer_for(cls) for n, m in metrics.items() if isinstance(m, FeatureMetric)}
    extractor = Extractor(settings.extractor, layers.values(), settings.weights, settings.device)
    return extractor, layers


def images_features(images: ImageSet, extractor, settings: Settings, sinks=()) -> tuple[FeatureSet, dict]:
    """Features of an image set (none without an extractor) and its description (with the pixel hash);
    every batch also goes to `sinks` (pixel metrics' accumulators)."""
    acc = extract(extractor, images, settings.batch_size, settings.workers, settings.progress, sinks)
    return FeatureSet(acc.features()), {**images.describe(), "pixel_sha256": acc.pixel_sha256()}


def resolve_reference(ref, extractor, layers, metrics, image_size, settings) -> Reference:
    """A Reference from a statistics file, an image folder or an (ADM) .npz; pixel metrics need images."""
    used = {n: m for n, m in metrics.items() if isinstance(m, FeatureMetric) and m.needs_reference}
    pixel = {n: m for n, m in metrics.items() if isinstance(m, PixelMetric)}
    stats_layers = sorted({layers[n] for n in used})
    feat_layers = sorted({layers[n] for n, m in used.items() if m.needs_reference_features})
    fid_layers = {layers[n] for n, m in used.items() if not m.needs_reference_features}
    if not stats_layers and not pixel:
        return None
    path = Path(ref)
    check_pixel_reference(ref, pixel)
    if path.suffix == STATS_SUFFIX:
        reference = load_reference(path)
        check_compatible(reference, path, extractor, image_size, stats_layers, feat_layers)
        return reference
    images = open_images(ref, None, settings.resize, settings.image_size)
    if tuple(images.image_size) != tuple(image_size):
        h, w = images.image_size
        raise DataError(f"reference images {ref} are {w}x{h} but the samples are {image_size[1]}x{image_size[0]}")
    sinks = {n: m.accumulator(settings.seed) for n, m in pixel.items()}
    features, description = images_features(images, extractor, settings, sinks.values())
    if extractor is not None:
        description["fid_statistics"] = "computed from the reference images"
    adm = images.extra
    if extractor is not None and "mu" in adm and "sigma" in adm:
        if extractor.name != INCEPTION or fid_layers - {ADM_LAYER}:
            raise DataError(f"{ref} holds ADM Inception pool3 statistics, usable only with {INCEPTION} FID")
        features.set_stats(ADM_LAYER, adm["mu"], adm["sigma"])
        description["fid_statistics"] = "ADM reference batch mu/sigma (precomputed by the ADM suite)"
    meta = {"extractor": extractor.describe() if extractor else None, "image_size": list(images.image_size)}
    return Reference(features, meta, description, pixels=sinks)


def check_pixel_reference(ref, names):
    """Refuse a statistics file as the reference of a pixel metric (swd): it holds features, not images."""
    if names and Path(ref).suffix == STATS_SUFFIX:
        raise DataError(
            f"{', '.join(names)} compares image pixels, which the statistics file {ref} does not hold; "
            "give --ref an image folder or .npz"
        )


def check_reference(ref, settings: Settings, metrics: dict | None = None):
    """Open the reference cheaply (statistics file or image headers) so a bad one fails before any network runs."""
    check_pixel_reference(ref, [n for n, m in (metrics or {}).items() if isinstance(m, PixelMetric)])
    path = Path(ref)
    if path.suffix == STATS_SUFFIX:
        load_reference(path)
    else:
        open_images(ref, None, settings.resize, settings.image_size)


def score(samples, ref, names, registry, settings: Settings, num=None, sets=()) -> dict:
    """Score generated images (folder or .npz) against `ref`; returns the full result document."""
    metrics = make_metrics(registry, names, sets, device=settings.device)
    images = open_images(samples, num, settings.resize, settings.image_size)
    check_reference(ref, settings, metrics)
    extractor, layers = build_extractor(metrics, settings)
    reference = resolve_reference(ref, extractor, layers, metrics, images.image_size, settings)
    sinks = {n: m.accumulator(settings.seed) for n, m in metrics.items() if isinstance(m, PixelMetric)}
    gen, gen_desc = images_features(images, extractor, settings, sinks.values())
    values = {}
    for n, metric in metrics.items():
        if n in sinks:
            values.update(metric(sinks[n], reference.pixels[n]))
        else:
            values.update(metric(gen, reference.features if reference else None, layers[n], settings.seed))
    return {
        "metrics": values,
        "samples": gen_desc,
        "reference": reference.description if reference else None,
        "feature_extractor": {**extractor.describe(), "layers": layers} if extractor else None,
        "metric_options": {n: m.options for n, m in metrics.items()},
        "image_size": list(images.image_size),
        "resize": {"policy": settings.resize, "image_size": settings.image_size},
        "num": images.count,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "device": settings.device,
        "versions": versions(),
    }


def reference_stats(data, out, settings: Settings, num=None, keep_features=True) -> dict:
    """Compute and save reference statistics (all of fid/kid/prc's layers) for `data`."""
    cls = extractor_class(settings.extractor)
    layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in ("fid", "kid", "prc")})
    images = open_images(data, num, settings.resize, settings.image_size)
    extractor = Extractor(settings.extractor, layers, settings.weights, settings.device)
    features, description = images_features(images, extractor, settings)
    meta = {
        "extractor": extractor.describe(),
        "image_size": list(images.image_size),
        "resize": {"policy": settings.resize, "image_size": settings.image_size},
        "count": images.count,
        "source": description,
        "versions": versions(),
    }
    return save_reference(out, features, layers, meta, keep_features)
