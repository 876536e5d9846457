"""Reconstruction evaluation of a system's VAE: rFID, LPIPS, PSNR, SSIM, SWD and the achieved fine-grain ratio."""

import os

import torch
from torch.utils.data import DataLoader, Subset

from d2it import system as systems
from d2it.errors import D2itError, DataError
from d2it.layout import fine_ratio
from d2it_cli.data import is_streaming, one_pass, open_dataset
from d2it_cli.evaluation.extractor import Extractor, FeatureAccumulator
from d2it_cli.evaluation.metrics import FeatureSet, PixelMetric, psnr, ssim
from d2it_cli.evaluation.scoring import Settings, extractor_class, make_metrics, versions
from d2it_cli.images import to_uint8

RECON_METRICS = ("rfid", "lpips", "psnr", "ssim")  # the default of `eval recon --metrics`
RECON_ALLOWED = (*RECON_METRICS, "swd")
PIXELWISE = ("psnr", "ssim")  # computed here per image pair, not registered components


def _uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> uint8 NCHW with DiT's rounding (uint8 inputs round-trip exactly)."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(reconstruction, grain map) with the posterior mode: encode -> sample_latent(mode=True) -> decode."""
    if all(hasattr(vae, m) for m in ("grain_map", "encode", "sample_latent", "decode")):
        grain_map = vae.grain_map(images)
        z = vae.sample_latent(vae.encode(images, grain_map), grain_map, mode=True)
        return vae.decode(z), grain_map
    out = vae(images)
    return out.recon, getattr(out, "grain_map", None)


def evaluate_recon(system_dir, data, names, registry=None, settings: Settings | None = None, num=None, sets=()) -> dict:
    """Reconstruct `data` with the system's VAE and score it; returns the result document."""
    settings = settings or Settings()
    record, _ = systems.read_record(system_dir)
    if not record.vae:
        raise D2itError(f"the system in {system_dir} has no VAE to evaluate")
    system = systems.load(system_dir, registry, parts=("vae",), device=settings.device)
    vae = system.vae.eval()
    dataset = open_dataset(data, record.image_size, train=False, registry=registry)
    total = None if is_streaming(dataset) else len(dataset)
    if total is None:  # a stream: read once in stored order, stop after --num
        one_pass(dataset, 0, 1)
    elif num is not None:
        if total < num:
            raise DataError(f"{data} holds {total} images, fewer than the {num} requested (--num)")
        dataset = Subset(dataset, range(num))
    metrics = make_metrics(registry, [n for n in names if n not in PIXELWISE], sets, device=settings.device)
    pixel = {n: (m.accumulator(settings.seed), m.accumulator(settings.seed))  # (inputs, reconstructions)
             for n, m in metrics.items() if isinstance(m, PixelMetric)}  # fmt: skip
    lpips_metric = metrics.get("lpips")
    extractor = acc_in = acc_out = None
    if "rfid" in metrics:
        layer = metrics["rfid"].layer_for(extractor_class(settings.extractor))
        extractor = Extractor(settings.extractor, [layer], settings.weights, settings.device)
        acc_in, acc_out = FeatureAccumulator(extractor), FeatureAccumulator(extractor)
    sums = {"lpips": 0.0, "psnr": 0.0, "ssim": 0.0, "fine": 0.0, "regions": 0}
    count = 0
    grains = getattr(vae, "grains", 1) or 1
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers)
    for batch in loader:
        images = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(settings.device).float()
        if total is None and num is not None:
            images = images[: num - count]
            if not len(images):
                break
        recon, grain_map = reconstruct(vae, images)
        recon = recon.float().clamp(-1, 1)
        count += images.shape[0]
        if acc_in is not None or pixel:  # the uint8 pixels a saved PNG would hold, as `eval gen` reads them
            images_u8, recon_u8 = _uint8(images), _uint8(recon)
        if acc_in is not None:
            acc_in.add(images_u8)
            acc_out.add(recon_u8)
        for pix_in, pix_out in pixel.values():
            pix_in.add(images_u8)
            pix_out.add(recon_u8)
        if lpips_metric is not None:
            sums["lpips"] += float(lpips_metric(recon, images).sum())
        sums["psnr"] += float(psnr(recon, images).sum())
        if "ssim" in names:
            sums["ssim"] += float(ssim(recon, images).sum())
        if grain_map is not None and grains > 1:
            sums["fine"] += float(fine_ratio(grain_map)) * grain_map.numel()
            sums["regions"] += grain_map.numel()
    if total is None and num is not None and count < num:
        raise DataError(f"{data} holds {count} images, fewer than the {num} requested (--num)")
    values = {}
    if acc_in is not None:
        recon_set, input_set = FeatureSet(acc_out.features()), FeatureSet(acc_in.features())
        values.update(metrics["rfid"](recon_set, input_set, layer, settings.seed))
    if lpips_metric is not None:
        values["lpips"] = sums["lpips"] / count
    for n in PIXELWISE:
        if n in names:
            values[n] = sums[n] / count
    for n, (pix_in, pix_out) in pixel.items():
        values.update(metrics[n](pix_out, pix_in))
    values["fine_ratio"] = sums["fine"] / sums["regions"] if sums["regions"] else None
    return {
        "metrics": values,
        "system": {
            "path": os.path.abspath(system_dir),
            "vae": record.vae,
            "image_size": record.image_size,
            "thresholds": list(record.thresholds),
        },
        "data": {
            "spec": str(data),
            "count": count,
            "available": total,
            "pixel_sha256": acc_in.pixel_sha256() if acc_in is not None else None,
        },
        "feature_extractor": ({**extractor.describe(), "layers": {"rfid": layer}} if extractor else None),
        "metric_options": {n: m.options for n, m in metrics.items()},
        "reconstruction": "encode -> sample_latent(mode=True) -> decode, clamped to [-1, 1]",
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "device": settings.device,
        "versions": versions(),
    }
