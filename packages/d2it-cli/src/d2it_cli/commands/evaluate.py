"""`d2it eval`: score generated images (gen), cache reference statistics (ref), VAE reconstructions (recon)
and the paper's FID-10K / FID-50K protocols end to end (sample-and-score)."""

import json

import click

from d2it import system as systems
from d2it.io import atomic_write_text
from d2it.progress import on_terminal
from d2it_cli import outputs
from d2it_cli.commands.params import BATCH, COUNT, DEVICE, SEED
from d2it_cli.commands.sampling import sampling_options
from d2it_cli.commands.system_dir import SYSTEM_DIR
from d2it_cli.evaluation import protocols
from d2it_cli.evaluation.extractor import INCEPTION
from d2it_cli.evaluation.protocols import PRESETS, protocol
from d2it_cli.evaluation.recon import RECON_ALLOWED, RECON_METRICS, evaluate_recon
from d2it_cli.evaluation.scoring import GEN_METRICS, Settings, parse_metrics, reference_stats, score
from d2it_cli.generation import SampleSettings
from d2it_cli.outputs import check_file_target
from d2it_cli.table import format_table


def _extractor_options(fn):
    """--inception-weights and the hidden --feature-extractor."""
    fn = click.option(
        "--feature-extractor",
        default=INCEPTION,
        show_default=True,
        hidden=True,
        help="torch-fidelity feature extractor name (testing).",
    )(fn)
    fn = click.option(
        "--inception-weights",
        type=click.Path(dir_okay=False),
        help="Local feature-extractor weights (default: torch-fidelity's cache, else download).",
    )(fn)
    return fn


def _run_options(fn):
    """--batch --device --seed --workers --quiet."""
    fn = click.option("--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.option(
        "--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Image decoding worker processes."
    )(fn)
    fn = click.option(
        "--seed",
        default=2020,
        show_default=True,
        type=SEED,
        help="Seed of the metrics' random subsets (IS splits, KID).",
    )(fn)
    fn = click.option(
        "--device", default=None, type=DEVICE, help="Device for the networks (default: CUDA when available)."
    )(fn)
    fn = click.option(
        "--batch",
        "batch_size",
        default=64,
        show_default=True,
        type=BATCH,
        help="Images per feature-extraction batch.",
    )(fn)
    return fn


def _resize_options(fn):
    """--resize and --image-size."""
    fn = click.option("--image-size", type=click.IntRange(min=1), help="Target size for --resize center-crop.")(fn)
    fn = click.option(
        "--resize",
        type=click.Choice(["none", "center-crop"]),
        default="none",
        show_default=True,
        help="none: use images as they are; center-crop: ADM's resize + centre crop to --image-size.",
    )(fn)
    return fn


def _settings(
    feature_extractor, inception_weights, batch_size, device, seed, workers, quiet, resize="none", image_size=None
) -> Settings:
    return Settings(
        extractor=feature_extractor,
        weights=inception_weights,
        batch_size=batch_size,
        device=str(systems.torch_device(device)),
        seed=seed,
        workers=workers,
        resize=resize,
        image_size=image_size,
        progress=on_terminal(not quiet),
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def _report(doc: dict, out, as_json: bool):
    """Write the JSON document (atomically) and print it or a table."""
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if out:
        atomic_write_text(out, text)
    if as_json:
        click.echo(text, nl=False)
        return
    click.echo(format_table(["metric", "value"], [[k, _fmt(v)] for k, v in doc["metrics"].items()]))
    ext = doc.get("feature_extractor")
    if ext:
        click.echo(f"\nfeature extractor: {ext['name']} (weights sha256 {ext['weights_sha256'][:16]}…)")
    for key in ("samples", "reference", "data"):
        part = doc.get(key)
        if part:
            where = part.get("path") or part.get("spec")
            click.echo(f"{key}: {part.get('count')} images from {where}")
    if out:
        click.echo(f"wrote {out}")


@click.group(name="eval")
def eval_group():
    """Evaluate: FID/IS/KID/precision-recall of samples, reference statistics, VAE reconstructions."""


@eval_group.command("gen")
@click.option(
    "--samples", required=True, type=click.Path(), help="Folder of PNGs or ADM-style .npz (arr_0 uint8 NHWC)."
)
@click.option(
    "--ref",
    required=True,
    type=click.Path(),
    help="Reference: image folder, .npz (ADM reference batches' mu/sigma are used) or `d2it eval ref` stats.",
)
@click.option(
    "--metrics",
    "metric_names",
    default=",".join(GEN_METRICS),
    show_default=True,
    help="Comma-separated: fid, isc, kid, prc, swd (pixels only: no Inception weights; needs an image --ref).",
)
@click.option("--num", type=COUNT, help="Use the first N samples (error when there are fewer).")
@click.option("--set", "sets", multiple=True, metavar="METRIC.OPTION=VALUE", help="Override a metric option.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_resize_options
@_extractor_options
@_run_options
@click.pass_obj
def gen(
    obj,
    samples,
    ref,
    metric_names,
    num,
    sets,
    out,
    as_json,
    resize,
    image_size,
    feature_extractor,
    inception_weights,
    batch_size,
    device,
    seed,
    workers,
    quiet,
):
    """Score generated images against a reference set with torch-fidelity."""
    check_file_target(out)
    settings = _settings(
        feature_extractor, inception_weights, batch_size, device, seed, workers, quiet, resize, image_size
    )
    doc = score(samples, ref, parse_metrics(metric_names), obj["registry"], settings, num=num, sets=sets)
    _report(doc, out, as_json)


@eval_group.command("ref")
@click.option("--data", required=True, type=click.Path(), help="Reference images: folder or .npz.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Statistics file (.safetensors).")
@click.option("--num", type=COUNT, help="Use the first N images.")
@click.option("--no-features", is_flag=True, help="Keep only mean and covariance (no KID or precision/recall later).")
@_resize_options
@_extractor_options
@_run_options
@click.pass_obj
def ref(
    obj,
    data,
    out,
    num,
    no_features,
    resize,
    image_size,
    feature_extractor,
    inception_weights,
    batch_size,
    device,
    seed,
    workers,
    quiet,
):
    """Precompute reference statistics (mean, covariance, features) once, for `eval gen --ref`."""
    check_file_target(out)
    settings = _settings(
        feature_extractor, inception_weights, batch_size, device, seed, workers, quiet, resize, image_size
    )
    meta = reference_stats(data, out, settings, num=num, keep_features=not no_features)
    h, w = meta["image_size"]
    click.echo(
        f"wrote {out}: {meta['count']} images of {w}x{h}, layers {', '.join(meta['layers'])}, "
        f"extractor {meta['extractor']['name']} (weights sha256 {meta['extractor']['weights_sha256'][:16]}…)"
    )


@eval_group.command("recon")
@click.option("--system", "system_dir", required=True, type=SYSTEM_DIR, help="Model directory or hf://REPO.")
@click.option("--data", required=True, help="Image folder, 'synthetic' or 'synthetic:N'.")
@click.option("--num", type=COUNT, help="Use the first N images (rFID-10K: 10000).")
@click.option(
    "--metrics",
    "metric_names",
    default=",".join(RECON_METRICS),
    show_default=True,
    help="Comma-separated: rfid, lpips, psnr, ssim, swd.",
)
@click.option("--lpips-weights", type=click.Path(dir_okay=False), help="A full LPIPS state dict (offline use).")
@click.option("--set", "sets", multiple=True, metavar="METRIC.OPTION=VALUE", help="Override a metric option.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_extractor_options
@_run_options
@click.pass_obj
def recon(
    obj,
    system_dir,
    data,
    num,
    metric_names,
    lpips_weights,
    sets,
    out,
    as_json,
    feature_extractor,
    inception_weights,
    batch_size,
    device,
    seed,
    workers,
    quiet,
):
    """Reconstruct images with the system's VAE: rFID, LPIPS, PSNR, SSIM (SWD on request) and the fine-grain ratio."""
    check_file_target(out)
    names = parse_metrics(metric_names, RECON_ALLOWED)
    if lpips_weights:
        sets = (*sets, f"lpips.weights={lpips_weights}")
    settings = _settings(feature_extractor, inception_weights, batch_size, device, seed, workers, quiet)
    doc = evaluate_recon(system_dir, data, names, obj["registry"], settings, num=num, sets=sets)
    _report(doc, out, as_json)


@eval_group.command("sample-and-score")
@click.option("--system", "system_dir", required=True, type=SYSTEM_DIR, help="Model directory or hf://REPO.")
@click.option("--ref", required=True, type=click.Path(), help="Reference: stats file, image folder or ADM .npz.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="fid-10k (FFHQ) or fid-50k (ImageNet, +IS, P/R).")
@click.option("--num", type=COUNT, help="Number of samples (overrides the preset).")
@click.option("--metrics", "metric_names", default=None, help="Comma-separated metrics (overrides the preset).")
@sampling_options(batch=32)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SLOT.OPTION=VALUE",
    help="Override a metric option, or a sampler option as sampler.OPTION=VALUE.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (resumable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--eval-batch",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per feature-extraction batch.",
)
@click.option("--metric-seed", default=2020, show_default=True, type=SEED, help="Seed of IS splits and KID subsets.")
@click.option(
    "--device", default=None, type=DEVICE, help="Device (default: CUDA when available; torchrun: one GPU per rank)."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_extractor_options
@click.pass_obj
def sample_and_score(
    obj,
    system_dir,
    ref,
    preset,
    num,
    metric_names,
    sampling,
    sets,
    out,
    as_json,
    eval_batch,
    metric_seed,
    device,
    quiet,
    feature_extractor,
    inception_weights,
):
    """Sample N images (sharded over torchrun ranks, resumable), assemble samples.npz and score it."""
    num, names = protocol(preset, num, metric_names)
    sampling = SampleSettings(num=num, **sampling)
    settings = Settings(
        extractor=feature_extractor,
        weights=inception_weights,
        batch_size=eval_batch,
        seed=metric_seed,
        progress=on_terminal(not quiet),
    )
    with outputs.claimed(out, "eval sample-and-score") as claim:  # samples, shards and metrics.json
        doc = protocols.sample_and_score(
            system_dir,
            ref,
            claim,
            sampling,
            names,
            settings,
            sets=sets,
            preset=preset,
            registry=obj["registry"],
            device=device,
            progress=not quiet,
        )
        if doc is not None:  # rank 0
            _report(doc, claim.path("metrics.json"), as_json)
