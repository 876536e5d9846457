"""The paper's evaluation protocols end to end: sample N images from a system (sharded, resumable), then score them."""

from pathlib import Path

import attrs

from d2it import dist
from d2it import system as systems
from d2it.errors import D2itError
from d2it.layout import fine_ratio
from d2it.registry import default_registry
from d2it_cli.evaluation.extractor import extractor_class
from d2it_cli.evaluation.metrics import FeatureMetric, PixelMetric
from d2it_cli.evaluation.scoring import Settings, check_pixel_reference, make_metrics, parse_metrics, score
from d2it_cli.generation import SampleSettings, require_vae, sample_to_dir, split_sampler_sets, with_sampler

# FFHQ FID-10K (paper Table 1 and ablations), ImageNet FID-50K with IS and precision/recall (Table 2)
PRESETS = {
    "fid-10k": {"num": 10000, "metrics": "fid"},
    "fid-50k": {"num": 50000, "metrics": "fid,isc,prc"},
}


def protocol(preset: str | None, num: int | None, metric_names: str | None) -> tuple[int, list[str]]:
    """(number of samples, metric names) of a preset, with explicit `num` and `metric_names` taking precedence."""
    chosen = PRESETS.get(preset, {})
    num = num or chosen.get("num")
    if num is None:
        raise D2itError("give --num or --preset (fid-10k, fid-50k)")
    return num, parse_metrics(metric_names or chosen.get("metrics") or "fid")


def sample_and_score(
    system_dir,
    ref,
    out,
    sampling: SampleSettings,
    names,
    settings: Settings,
    *,
    sets=(),
    preset=None,
    registry=None,
    device=None,
    progress=True,
) -> dict | None:
    """Sample into `out` (samples.npz; shards kept for a resume) on every rank, then score on rank 0.

    `sets` are `--set` items: `sampler.OPTION=VALUE` for the sampler, the others for the metrics.
    Returns the result document on rank 0 (with the sampling settings and the samples' fine ratio),
    None on the other ranks.
    """
    registry = registry or default_registry()
    sampler_sets, sets = split_sampler_sets(sets, others="metrics")
    metrics = make_metrics(registry, names, sets)  # bad metric options and a stats file for swd fail before sampling
    check_pixel_reference(ref, [n for n, m in metrics.items() if isinstance(m, PixelMetric)])
    if any(isinstance(m, FeatureMetric) for m in metrics.values()):
        extractor_class(settings.extractor)  # an unknown or refused feature extractor fails before sampling
    record, _ = systems.read_record(system_dir)
    require_vae(record, system_dir)
    sampling = with_sampler(sampling, record, sampler_sets, registry)
    device = dist.init_distributed(device)
    system = systems.load(system_dir, registry, device=str(device))  # safetensors wants a string
    samples = sample_to_dir(system, out, sampling, device=device, progress=progress, resume=True, npz=True)
    dist.shutdown()
    if samples is None:
        return None
    doc = score(
        str(samples.npz), ref, names, registry, attrs.evolve(settings, device=str(device)), num=sampling.num, sets=sets
    )
    doc["sampling"] = {**samples.manifest, "preset": preset, "system_path": str(Path(system_dir).resolve())}
    if "grain_maps" in samples.arrays and len(samples.arrays["grain_maps"]):
        doc["metrics"]["fine_ratio"] = fine_ratio(samples.arrays["grain_maps"])
    return doc
