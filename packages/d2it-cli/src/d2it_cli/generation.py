"""Sharded, resumable sampling: every rank generates its share of shards, rank 0 assembles `samples.npz`.

Samples are cut into shards of `batch` images; sample i's random streams come from (seed, i) alone
(`d2it_sampling.pipeline.sample_seed` with i the global sample index), so a sample does not depend
on the batch size, on how many ranks ran or in which order. Finished shards
live under `out_dir/shards/` and are skipped when a run is resumed. `samples.npz` holds `arr_0`
(uint8 NHWC, the array the ADM evaluation suite reads), `labels` and, for D²iT systems,
`grain_maps`.
"""

import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from tqdm import tqdm

from d2it.errors import D2itError
from d2it.io import atomic_path, atomic_write_text, state_sha256
from d2it_cli.engine import dist
from d2it_cli.images import to_uint8
from d2it_cli.npz import load_npz

NPZ_NAME = "samples.npz"
MANIFEST_NAME = "samples.json"
SHARD_DIR = "shards"


class ClassError(D2itError, ValueError):
    """A class index the system was not trained on, or conflicting class options."""


def bar_enabled(progress: bool) -> bool:
    """Progress bars only when asked for and stdout is a terminal."""
    return bool(progress) and sys.stdout.isatty()


def split_sampler_sets(sets, *, others: str | None = None) -> tuple[dict, list[str]]:
    """`--set` items: ({option: value} of `sampler.OPTION=VALUE`, the other items).

    With `others=None` any other slot is an error; else those items are returned for `others` (e.g. metrics).
    """
    from d2it.config import parse_sets

    sampler_sets, rest = {}, []
    for item in sets or ():
        (slot, options), = parse_sets([item]).items()
        if slot == "sampler":
            sampler_sets.update(options)
        elif others is None:
            raise D2itError(f"--set here takes sampler.OPTION=VALUE, got slot {slot!r}")
        else:
            rest.append(item)
    return sampler_sets, rest


def sampler_choice(record, sampler: str | None = None, sets=None, registry=None) -> tuple[str, dict]:
    """(sampler name, its options): the system's sampler and options, or another one with its defaults, plus `sets`.

    `sets` are `--set sampler.OPTION=VALUE` overrides ({option: value}); the result is checked
    here, so a bad name or option fails before any weights load.
    """
    from d2it.registry import default_registry

    registry = registry or default_registry()
    spec = registry.get("sampler", sampler or record.sampler)
    same = spec.name == registry.get("sampler", record.sampler).name if sampler else True
    options = dict(record.options.get("sampler", {})) if same else {}
    options.update(sets or {})
    config = spec.make_config(options)
    registry.create("sampler", spec.name, config)
    return spec.name, {k: v for k, v in attrs.asdict(config).items() if k in options}


def parse_classes(text: str | None) -> list[int] | None:
    """'0,5,7' -> [0, 5, 7]; None or '' -> None."""
    if text is None or not str(text).strip():
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ClassError(f"class indices must be integers, got {part!r}") from None
    return out or None


def sample_labels(num: int, num_classes: int, *, classes=None, classes_uniform: bool = False, seed: int = 0):
    """The class of every sample: given classes cycled, every class equally often, or uniformly random (seeded)."""
    if num < 0:
        raise D2itError(f"the number of samples must be positive, got {num}")
    if classes is not None and classes_uniform:
        raise ClassError("give either explicit classes or classes-uniform, not both")
    if classes is not None:
        classes = [int(c) for c in classes]
        if not classes:
            raise ClassError("the list of classes is empty")
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ClassError(f"class {bad[0]} is out of range: this system has classes 0..{num_classes - 1}")
        return torch.tensor(classes, dtype=torch.int64).repeat((num + len(classes) - 1) // len(classes))[:num]
    if num_classes <= 1:
        return torch.zeros(num, dtype=torch.int64)
    if classes_uniform:
        return torch.arange(num, dtype=torch.int64) % num_classes
    # DiT's sample_ddp draws labels uniformly at random; seeded so every rank agrees
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, num_classes, (num,), generator=generator, dtype=torch.int64)


def system_fingerprint(system) -> str:
    """SHA-256 of the system record and every weight, so resumed shards come from the same model."""
    h = hashlib.sha256(json.dumps(system.record.to_dict(), sort_keys=True).encode())
    for stem, module in sorted(system.weight_modules().items()):
        h.update(f"{stem}:{state_sha256(module.state_dict())};".encode())
    return h.hexdigest()


def _settings(system, num, labels, seed, steps, sampler, sampler_options, cfg_scale, grain_cfg_scale, grain_options,
              batch):
    label_hash = hashlib.sha256(labels.numpy().tobytes()).hexdigest()
    return {
        "system": system_fingerprint(system),
        "num": int(num),
        "batch": int(batch),
        "seed": int(seed),
        "steps": None if steps is None else int(steps),
        "sampler": sampler or system.record.sampler,
        "sampler_options": dict(sampler_options or {}),
        "cfg_scale": float(cfg_scale),
        "guidance_channels": system.record.options.get("guidance", {}).get("channels", "all"),
        "grain_cfg_scale": float(grain_cfg_scale),
        "grain_options": dict(grain_options or {}),
        "labels": label_hash,
    }


def _shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:06d}.npz"


def write_npz(path: Path, **arrays):
    """Write arrays to an .npz file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _read_shard(path: Path, expected: int) -> dict | None:
    """A finished shard's arrays, or None when the file is missing, unreadable or the wrong size."""
    if not path.is_file():
        return None
    try:
        out = load_npz(path)
    except D2itError:
        return None
    if out.get("arr_0") is None or len(out["arr_0"]) != expected:
        return None
    return out


def _check_manifest(shard_dir: Path, settings: dict, resume: bool):
    manifest = shard_dir / MANIFEST_NAME
    if shard_dir.exists() and not resume:
        shutil.rmtree(shard_dir)
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            old = None
        if old != settings:
            changed = sorted(k for k in settings if not old or old.get(k) != settings[k])
            raise D2itError(
                f"{shard_dir} holds shards sampled with other settings "
                f"({', '.join(changed) or 'unreadable manifest'}); "
                "use another output directory or start over without resuming"
            )
    shard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def require_vae(record, system_dir):
    """Refuse to sample a system without a VAE: its latents cannot become images."""
    if not record.vae:
        raise D2itError(
            f"the system in {system_dir} has no VAE (it was built with --vae none), so its samples cannot be "
            "decoded into images; build it with a VAE such as --vae dvae-kl"
        )


def check_finite(result, shard: int, cfg_scale: float, latent_scale: float):
    """Stop before writing a shard whose latents or images hold NaN or infinity."""
    for what in ("latents", "images"):
        tensor = getattr(result, what, None)
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise D2itError(
                f"sampling produced non-finite {what} in shard {shard} (cfg scale {cfg_scale}, latent scale "
                f"{latent_scale}); the weights may have diverged, nothing was written for this shard"
            )


def shard_ranges(num: int, batch: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard."""
    return [(s, min(s + batch, num)) for s in range(0, num, batch)]


def _generate(system, classes, **kwargs):
    from d2it_sampling.pipeline import generate

    return generate(system, classes, **kwargs)


def run_shards(
    system,
    num: int,
    out_dir,
    *,
    classes: Sequence[int] | None = None,
    classes_uniform: bool = False,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    sampler_options: dict | None = None,
    cfg_scale: float = 1.5,
    grain_cfg_scale: float = 1.0,
    grain_options: dict | None = None,
    batch: int = 16,
    device=None,
    progress: bool = True,
    resume: bool = True,
) -> list[Path]:
    """Generate this rank's shards (skipping finished ones); returns every shard's path once all ranks are done."""
    if batch < 1:
        raise D2itError(f"the batch size must be at least 1, got {batch}")
    if steps is not None and steps < 1:
        raise D2itError(f"the number of sampling steps must be at least 1, got {steps}")
    dev = dist.init_distributed(None if device is None else str(device))
    labels = sample_labels(num, system.record.num_classes, classes=classes, classes_uniform=classes_uniform, seed=seed)
    out_dir = Path(out_dir)
    shard_dir = out_dir / SHARD_DIR
    settings = _settings(system, num, labels, seed, steps, sampler, sampler_options, cfg_scale, grain_cfg_scale,
                         grain_options, batch)
    with dist.main_first():
        if dist.is_main():
            _check_manifest(shard_dir, settings, resume)
    ranges = shard_ranges(num, batch)
    mine = [i for i in range(len(ranges)) if i % dist.world_size() == dist.rank()]
    todo = [i for i in mine if _read_shard(_shard_path(shard_dir, i), ranges[i][1] - ranges[i][0]) is None]
    show = bar_enabled(progress) and dist.is_main()
    done_before = sum(ranges[i][1] - ranges[i][0] for i in mine if i not in todo)
    total_mine = sum(ranges[i][1] - ranges[i][0] for i in mine)
    was_training = system.training
    system.eval()
    try:
        quiet_bar = not show or len(todo) < 2
        with tqdm(total=total_mine, initial=done_before, desc="sampling", unit="img", disable=quiet_bar) as bar:
            for i in todo:
                start, stop = ranges[i]
                with torch.no_grad():
                    result = _generate(
                        system,
                        labels[start:stop].to(dev),
                        seed=seed,
                        first_index=start,
                        steps=steps,
                        sampler=sampler,
                        sampler_options=sampler_options,
                        cfg_scale=cfg_scale,
                        grain_cfg_scale=grain_cfg_scale,
                        grain_options=grain_options,
                        batch_size=batch,
                        device=dev,
                        progress=show and len(todo) == 1,
                    )
                check_finite(result, i, cfg_scale, getattr(system, "latent_scale", None))
                arrays = {"arr_0": to_uint8(result.images), "labels": labels[start:stop].numpy()}
                if getattr(result, "grain_maps", None) is not None:
                    arrays["grain_maps"] = result.grain_maps.detach().cpu().numpy().astype(np.uint8)
                write_npz(_shard_path(shard_dir, i), **arrays)
                bar.update(stop - start)
    finally:
        system.train(was_training)
    dist.barrier()
    return [_shard_path(shard_dir, i) for i in range(len(ranges))]


def read_shards(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Concatenate shard files in order into {arr_0, labels[, grain_maps]}."""
    parts: dict[str, list] = {}
    for path in paths:
        for key, value in load_npz(path).items():
            parts.setdefault(key, []).append(value)
    if not parts:
        return {"arr_0": np.zeros((0, 0, 0, 3), np.uint8), "labels": np.zeros((0,), np.int64)}
    counts = {k: len(v) for k, v in parts.items()}
    if len(set(counts.values())) != 1:
        raise D2itError(f"shards disagree on their contents ({counts}); start over without resuming")
    return {k: np.concatenate(v) for k, v in parts.items()}


def sample_shards(
    system,
    num: int,
    out_dir,
    *,
    classes: Sequence[int] | None = None,
    classes_uniform: bool = False,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    sampler_options: dict | None = None,
    cfg_scale: float = 1.5,
    grain_cfg_scale: float = 1.0,
    grain_options: dict | None = None,
    batch: int = 16,
    device=None,
    progress: bool = True,
    resume: bool = True,
    keep_shards: bool = True,
) -> Path:
    """Sample `num` images on all ranks into out_dir/samples.npz (arr_0 uint8 NHWC, labels, grain_maps); returns it."""
    out_dir = Path(out_dir)
    npz = out_dir / NPZ_NAME
    paths = run_shards(
        system,
        num,
        out_dir,
        classes=classes,
        classes_uniform=classes_uniform,
        seed=seed,
        steps=steps,
        sampler=sampler,
        sampler_options=sampler_options,
        cfg_scale=cfg_scale,
        grain_cfg_scale=grain_cfg_scale,
        grain_options=grain_options,
        batch=batch,
        device=device,
        progress=progress,
        resume=resume,
    )
    if dist.is_main():
        arrays = read_shards(paths)
        write_npz(npz, **arrays)
        manifest = out_dir / SHARD_DIR / MANIFEST_NAME
        atomic_write_text(out_dir / MANIFEST_NAME, manifest.read_text())
        if not keep_shards:
            shutil.rmtree(out_dir / SHARD_DIR)
    dist.barrier()
    return npz


def load_samples(path) -> dict[str, np.ndarray]:
    """The arrays of a samples.npz written by `sample_shards`."""
    path = Path(path)
    if not path.is_file():
        raise D2itError(f"sample file {path} does not exist")
    return load_npz(path)
