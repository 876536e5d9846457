"""Sharded, resumable sampling from a system into a folder: shards -> samples.npz -> samples.json.

Samples are cut into shards of `batch` images; sample i's random streams come from (seed, i) alone
(`d2it_sampling.pipeline.sample_seed` with i the global sample index), so a sample does not depend
on the batch size, on how many ranks ran or in which order. Finished shards live under
`out_dir/shards/` with the settings they were drawn with (`samples.json`) and are skipped when a
run is resumed. `samples.npz` holds `arr_0` (uint8 NHWC, the array the ADM evaluation suite reads),
`labels` and, for D²iT systems, `grain_maps`.

`sample_to_dir` is the one entry point (`d2it sample` and `d2it eval sample-and-score` both call
it); `sample_images` adds the PNGs and the grid of `d2it sample`.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import attrs
import numpy as np
import torch

from d2it import dist
from d2it import system as systems
from d2it.config import parse_sets
from d2it.errors import D2itError
from d2it.io import atomic_path, atomic_write_text, state_sha256
from d2it.layout import fine_ratio
from d2it.progress import progress_bar
from d2it.registry import default_registry
from d2it_cli import images as imgs
from d2it_cli import outputs
from d2it_cli.npz import load_npz
from d2it_sampling.pipeline import generate

NPZ_NAME = "samples.npz"
MANIFEST_NAME = "samples.json"
SHARD_DIR = "shards"
SAMPLE_DIR = "samples"
GRID_NAME = "grid.png"
GRID_LIMIT = 64  # samples shown in the grid


class ClassError(D2itError, ValueError):
    """A class index the system was not trained on, or conflicting class options."""


def split_sampler_sets(sets, *, others: str | None = None) -> tuple[dict, list[str]]:
    """`--set` items: ({option: value} of `sampler.OPTION=VALUE`, the other items).

    With `others=None` any other slot is an error; else those items are returned for `others` (e.g. metrics).
    """
    sampler_sets, rest = {}, []
    for item in sets or ():
        ((slot, options),) = parse_sets([item]).items()
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


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def draw_labels(num: int, num_classes: int, *, classes=None, classes_uniform: bool = False, seed: int = 0):
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


@attrs.frozen
class SampleSettings:
    """What to draw: how many, which classes, and how (seed, steps, sampler, guidance, batch = shard size)."""

    num: int
    classes: tuple | None = attrs.field(default=None, converter=lambda c: None if c is None else tuple(c))
    classes_uniform: bool = False
    seed: int = 0
    steps: int | None = None  # None: the sampler's own `steps` option
    sampler: str | None = None
    sampler_options: dict = attrs.field(factory=dict, converter=dict)
    cfg_scale: float = 1.5
    grain_cfg_scale: float = 1.0
    grain_options: dict = attrs.field(factory=dict, converter=dict)
    batch: int = 16

    def labels(self, num_classes: int) -> torch.Tensor:
        """The class of every sample (raises ClassError for classes the system lacks); validates the numbers too."""
        if self.batch < 1:
            raise D2itError(f"the batch size must be at least 1, got {self.batch}")
        if self.steps is not None and self.steps < 1:
            raise D2itError(f"the number of sampling steps must be at least 1, got {self.steps}")
        return draw_labels(
            self.num, num_classes, classes=self.classes, classes_uniform=self.classes_uniform, seed=self.seed
        )

    def check_size(self, image_size: int):
        """Refuse a --num whose samples (held together for samples.npz, uint8 HWC, plus labels) exceed this machine's
        memory, before anything is allocated."""
        need = int(self.num) * (3 * int(image_size) ** 2 + 8)
        have = physical_memory()
        if have is not None and need > have:
            raise D2itError(
                f"--num {self.num} samples of {image_size}x{image_size} pixels need {need / 2**30:,.1f} GiB of memory, "
                f"more than this machine's {have / 2**30:,.1f} GiB; draw fewer (in several runs)"
            )

    def manifest(self, system, labels: torch.Tensor) -> dict:
        """The settings a shard folder was drawn with (`samples.json`): resumed shards must match them."""
        return {
            "system": system_fingerprint(system),
            "num": int(self.num),
            "batch": int(self.batch),
            "seed": int(self.seed),
            "steps": None if self.steps is None else int(self.steps),
            "sampler": self.sampler or system.record.sampler,
            "sampler_options": dict(self.sampler_options),
            "cfg_scale": float(self.cfg_scale),
            "guidance_channels": system.record.options.get("guidance", {}).get("channels", "all"),
            "grain_cfg_scale": float(self.grain_cfg_scale),
            "grain_options": dict(self.grain_options),
            "labels": hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
        }


@attrs.frozen
class Samples:
    """What `sample_to_dir` drew (rank 0): the arrays of samples.npz, the settings manifest and the npz path."""

    arrays: dict
    manifest: dict
    npz: Path | None


def shard_ranges(num: int, batch: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard."""
    return [(s, min(s + batch, num)) for s in range(0, num, batch)]


def _shard_name(index: int) -> str:
    return f"{SHARD_DIR}/shard-{index:06d}.npz"


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


def _check_manifest(out: outputs.Output, manifest: dict, resume: bool):
    """Start the shard folder afresh, or check that the shards in it were drawn with the same settings."""
    name = f"{SHARD_DIR}/{MANIFEST_NAME}"
    if not resume:
        out.remove_under(SHARD_DIR)  # only the shards we recorded: a user's file there stays
    path = out.path(name)
    if path.is_file():
        try:
            old = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError:  # JSON or UTF-8
            old = None
        old = old if isinstance(old, dict) else None
        if old != manifest:
            changed = sorted(k for k in manifest if not old or old.get(k) != manifest[k])
            raise D2itError(
                f"{path.parent} holds shards sampled with other settings "
                f"({', '.join(changed) or 'unreadable manifest'}); "
                "use another output directory or start over without resuming"
            )
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_finite(result, shard: int, cfg_scale: float, latent_scale: float):
    """Stop before writing a shard whose latents or images hold NaN or infinity."""
    for what in ("latents", "images"):
        tensor = getattr(result, what, None)
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise D2itError(
                f"sampling produced non-finite {what} in shard {shard} (cfg scale {cfg_scale}, latent scale "
                f"{latent_scale}); the weights may have diverged, nothing was written for this shard"
            )


def _draw_shards(system, paths: list[Path], settings: SampleSettings, labels, device, progress: bool):
    """Generate this rank's unfinished shards (`paths`: every shard's file)."""
    ranges = shard_ranges(settings.num, settings.batch)
    mine = [i for i in range(len(ranges)) if i % dist.world_size() == dist.rank()]
    todo = [i for i in mine if _read_shard(paths[i], ranges[i][1] - ranges[i][0]) is None]
    show = progress and dist.is_main()
    done_before = sum(ranges[i][1] - ranges[i][0] for i in mine if i not in todo)
    total_mine = sum(ranges[i][1] - ranges[i][0] for i in mine)
    one_bar = show and len(todo) > 1  # a single shard shows the pipeline's own bar instead
    with progress_bar(total=total_mine, initial=done_before, desc="sampling", unit="img", enabled=one_bar) as bar:
        for i in todo:
            start, stop = ranges[i]
            result = generate(
                system,
                labels[start:stop].to(device),
                seed=settings.seed,
                first_index=start,
                steps=settings.steps,
                sampler=settings.sampler,
                sampler_options=settings.sampler_options or None,
                cfg_scale=settings.cfg_scale,
                grain_cfg_scale=settings.grain_cfg_scale,
                grain_options=settings.grain_options or None,
                batch_size=settings.batch,
                device=device,
                progress=show and len(todo) == 1,
            )
            check_finite(result, i, settings.cfg_scale, getattr(system, "latent_scale", None))
            arrays = {"arr_0": imgs.to_uint8(result.images), "labels": labels[start:stop].numpy()}
            if result.grain_maps is not None:
                arrays["grain_maps"] = result.grain_maps.detach().cpu().numpy().astype(np.uint8)
            write_npz(paths[i], **arrays)
            bar.update(stop - start)


def read_shards(paths) -> dict[str, np.ndarray]:
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


def sample_to_dir(
    system, out_dir, settings: SampleSettings, *, device=None, progress=True, resume=True, npz=True, keep_shards=True
) -> Samples | None:
    """Draw `settings.num` samples on every rank into `out_dir` (shards, then samples.npz and samples.json).

    Finished shards of an earlier run with the same settings are reused (`resume`); `npz` writes
    out_dir/samples.npz; `keep_shards` leaves the shards for a later resume. `out_dir` is claimed as
    an output folder (`outputs.claimed`) unless it is one already. Returns the samples on rank 0
    (None on the other ranks) once every rank is done.
    """
    settings.check_size(system.record.image_size)
    labels = settings.labels(system.record.num_classes)
    device = dist.init_distributed(None if device is None else str(device))
    manifest = settings.manifest(system, labels)
    count = len(shard_ranges(settings.num, settings.batch))
    with outputs.claimed(out_dir, "sample") as out:
        with dist.main_first():
            if dist.is_main():
                _check_manifest(out, manifest, resume)
            paths = [out.path(_shard_name(i)) for i in range(count)]  # checked and recorded before any is drawn
            out.save()
        _draw_shards(system, paths, settings, labels, device, progress)
        dist.barrier()
        result = None
        if dist.is_main():
            arrays = read_shards(paths)
            if npz:
                write_npz(out.path(NPZ_NAME), **arrays)
            atomic_write_text(out.path(MANIFEST_NAME), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if not keep_shards:
                out.remove_under(SHARD_DIR)
            result = Samples(arrays, manifest, out.shown / NPZ_NAME if npz else None)
        dist.barrier()
    return result


def load_samples(path) -> dict[str, np.ndarray]:
    """The arrays of a samples.npz written by `sample_to_dir`."""
    path = Path(path)
    if not path.is_file():
        raise D2itError(f"sample file {path} does not exist")
    return load_npz(path)


def grid_with_grains(arr: np.ndarray, grain_maps: np.ndarray | None, grains: int, limit: int = GRID_LIMIT):
    """A grid of (sample | sample with grain-map overlay) tiles, small images enlarged to at least 64 px."""
    arr = arr[:limit]
    scale = max(1, math.ceil(64 / max(1, arr.shape[1])))
    big = imgs.upscale(arr, scale)
    if grain_maps is None:
        return imgs.make_grid(big)
    overlay = imgs.grain_overlay(big, grain_maps[:limit].astype(np.int64), grains=grains)
    tiles = np.stack([imgs.hstack([a, b], gap=1) for a, b in zip(big, overlay)])
    return imgs.make_grid(tiles, nrow=max(1, math.ceil(math.sqrt(len(tiles) / 2))), padding=4)


def write_pngs(arrays: dict, out: outputs.Output, grains: int) -> dict:
    """Write one PNG per sample and the grid into the claimed folder `out`; returns a summary.

    Every path is checked before the first is written, so a user's file in the way stops the run
    with nothing changed; the earlier run's files that this one does not rewrite go at `out.commit()`.
    """
    images, labels = arrays["arr_0"], arrays["labels"]
    paths = [out.path(f"{SAMPLE_DIR}/{i:06d}_class{int(label)}.png") for i, label in enumerate(labels)]
    grid_path = out.path(GRID_NAME)
    out.save()  # a killed run's PNGs are known to the next one
    for image, path in zip(images, paths):
        imgs.save_png(image, path)
    grid = grid_with_grains(images, arrays.get("grain_maps"), grains)
    imgs.save_png(grid, grid_path)
    summary = {"num": int(len(images)), "samples": str(out.shown / SAMPLE_DIR), "grid": str(grid_path)}
    if "grain_maps" in arrays and len(arrays["grain_maps"]):
        summary["fine_ratio"] = round(fine_ratio(arrays["grain_maps"]), 4)
    return summary


def with_sampler(settings: SampleSettings, record, sampler_sets=None, registry=None) -> SampleSettings:
    """`settings` with the sampler resolved against the system `record` and `--set sampler.*` applied (checked)."""
    sampler, options = sampler_choice(record, settings.sampler, sampler_sets, registry)
    return attrs.evolve(settings, sampler=sampler, sampler_options=options)


def require_vae(record, system_dir, hint: str = "build it with a VAE such as --vae dvae-kl"):
    """Refuse to sample a system without a VAE: its latents cannot become images."""
    if not record.vae:
        raise D2itError(
            f"the system in {system_dir} has no VAE (it was built with --vae none), so its samples cannot be "
            f"decoded into images; {hint}"
        )


def sample_images(
    system_dir,
    out,
    settings: SampleSettings,
    *,
    sampler_sets=None,
    registry=None,
    device=None,
    progress=True,
    resume=True,
    npz=False,
) -> dict | None:
    """`d2it sample`: load a system, draw samples into `out` (PNGs, grid, samples.json, optionally samples.npz).

    `sampler_sets` ({option: value}) override the sampler's options. Classes, the sampler and its
    options are checked before any weight is loaded. Returns the summary on rank 0, None elsewhere.
    """
    registry = registry or default_registry()
    device = dist.init_distributed(device)
    record, _ = systems.read_record(system_dir)
    require_vae(record, system_dir, f"add one with d2it import sd-vae sd-vae-ft-ema --out {system_dir}")
    settings.check_size(record.image_size)
    settings.labels(record.num_classes)  # bad classes fail before the weights load
    settings = with_sampler(settings, record, sampler_sets, registry)
    with outputs.claimed(out, "sample") as claim:  # files of an earlier run this one does not rewrite go at the end
        system = systems.load(system_dir, registry, device=str(device))  # safetensors wants a string
        samples = sample_to_dir(
            system, claim, settings, device=device, progress=progress, resume=resume, npz=False, keep_shards=False
        )
        if samples is None:
            return None
        summary = write_pngs(samples.arrays, claim, grains=system.grains)
        if npz:
            write_npz(claim.path(NPZ_NAME), **samples.arrays)
            summary["npz"] = str(claim.shown / NPZ_NAME)
        atomic_write_text(claim.path(MANIFEST_NAME), json.dumps(samples.manifest, indent=2, sort_keys=True) + "\n")
    return summary
