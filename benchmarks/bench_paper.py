"""The paper in miniature: D²iT against DiT on real images, with the paper's ablations, scored by SWD per level.

Every model is trained through the real `d2it` commands (build, thresholds, train dvae, encode, train
grain, train content), all on the same data, seeds, sampler and steps:

1. Stage 1 (supplementary Table 3 analogue): the DVAE (`dvae-kl`, entropy grains, fine ratio 0.5;
   log-variance fixed, as LDM trains, and learned) against fixed-grain KL autoencoders at 8x and 16x,
   trained for the same steps: held-out PSNR, SSIM, SWD and latent tokens per image.
2. Stage 2 (Table 1 analogue): D²iT-S (DVAE + routed DiT-S + RefineNet + grain transformer) against
   DiT-S/2 on the 8x autoencoder, at equal steps and at equal training compute (forward GMACs x
   images seen), with the curve of SWD against training compute for both.
3. Ablations (Tables 3 and 5): routing only (`--refine none`), without the dynamic grain loss
   (`--grain-loss cell`), full D²iT; grain maps from the grain transformer, the entropy coder's
   ground truth (of held-out images), random maps, all-fine and all-coarse maps.
4. Noise: every stage-2 model is trained once per seed (`--seeds`: its own initialisation, data order and
   sample noise), and on a GPU every SWD also carries a bootstrap over its sample set, so the table says
   which differences exceed the run-to-run spread.

Scores are against a held-out split no model trained on (`--heldout`; for `openmoji` its `test`
split). With `--inception-weights PATH` the tables gain FID and KID columns.
Profiles: `cpu` (64 px, under an hour on two cores) and `gpu` (128 px, about 8 minutes of one H100);
`--dry-run` runs a profile's code path at tiny sizes (a smoke test).

Run: python benchmarks/run.py paper [--profile cpu|gpu] [--dry-run] [--data openmoji] [--heldout SPEC]
                                    [--seeds 0,1] [--inception-weights PATH] [--device cuda] [--work DIR]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch
from common import RESULTS, machine, markdown_table

from d2it_cli.demo import SMALL_VAE, TINY_VAE  # the demo's DVAE trunks (CPU and GPU sizes)


def fixed_grain(dvae_sets: tuple, factor: int) -> tuple:
    """The fixed-grain autoencoder matching a DVAE's trunk: 8x drops the coarsest level, 16x keeps it."""
    out = []
    for item in dvae_sets:
        key, _, value = item.partition("=")
        if key == "vae.channel_mult" and factor == 8:
            value = ",".join(value.split(",")[:-1])
        if key == "vae.decoder_mult" and factor == 16:  # the DVAE decodes at 8x; a 16x decoder has one more level
            value = f"{value},{value.split(',')[-1]}"
        if key == "vae.attn_levels":
            continue  # the DVAE's coarsest levels hold its attention; the baselines' mid block has it
        out.append(f"{key}={value}")
    return tuple(out)


@attrs.frozen
class Profile:
    """Sizes, steps and sample counts of one run of the benchmark."""

    image_size: int = 64
    dvae: tuple = TINY_VAE
    depth: int = 4  # DiT blocks; D²iT splits them: depth - refine_depth backbone blocks + refine_depth RefineNet blocks
    refine_depth: int = 1
    hidden: int = 192
    heads: int = 3
    grain: tuple = ("grain.depth=2", "grain.hidden_size=64", "grain.num_heads=2")
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    grain_steps: int = 300
    grain_batch: int = 64
    grain_lr: float = 1e-3
    grain_ema_decay: float = 0.99  # the trainer's default 0.9999 would leave a 300-step EMA at its initial weights
    content_steps: int = 1000
    content_batch: int = 32
    content_lr: float = 5e-4
    ema_decay: float = 0.995
    curve: tuple = (0.5, 1.0)  # fractions of the D²iT steps where the compute curve is measured
    num_samples: int = 500
    curve_samples: int = 200
    sample_steps: int = 25
    sampler: str = "dpmpp-2m"
    sample_batch: int = 100
    bootstrap: int = 0  # resamples of each sample set (an SWD of 500 images costs seconds on a CPU)
    workers: int = 0

    def backbone(self, routed: bool) -> tuple:
        """--set items of the content model: D²iT splits the DiT's depth between backbone and RefineNet."""
        sets = [f"backbone.hidden_size={self.hidden}", f"backbone.num_heads={self.heads}"]
        if routed:
            split = self.depth - self.refine_depth
            return (*sets, f"backbone.depth={split}", f"backbone.refine_depth={self.refine_depth}")
        return (*sets, f"backbone.depth={self.depth}")


PROFILES = {
    "cpu": Profile(),
    "gpu": Profile(
        image_size=128,
        dvae=SMALL_VAE,
        depth=8,
        refine_depth=2,
        hidden=384,
        heads=6,
        grain=("grain.depth=4", "grain.hidden_size=128", "grain.num_heads=4"),
        vae_steps=1500,
        vae_batch=32,
        vae_lr=1e-3,
        grain_steps=600,
        grain_batch=128,
        content_steps=2500,
        content_batch=64,
        content_lr=3e-4,
        ema_decay=0.998,
        num_samples=1000,
        curve_samples=300,
        sample_batch=250,
        bootstrap=5,
        workers=4,
    ),
}


def dry(profile: Profile) -> Profile:
    """The same code path at tiny sizes: a smoke test of a profile."""
    return attrs.evolve(
        profile,
        image_size=min(profile.image_size, 64),
        vae_steps=4,
        vae_batch=4,
        grain_steps=4,
        grain_batch=8,
        content_steps=4,
        content_batch=8,
        num_samples=12,
        curve_samples=8,
        sample_steps=3,
        sample_batch=12,
        bootstrap=3,
        workers=0,
    )


# ------------------------------------------------------------------------------------------- commands


class Commands:
    """Runs `d2it` commands in this process; a failure stops the benchmark naming the command."""

    def __init__(self, device: str, quiet: bool, log: Path):
        from d2it_cli.commands.demo import ClickRunner
        from d2it_cli.main import load_registry, make_cli

        self.runner = ClickRunner(make_cli(load_registry()))
        self.device, self.quiet, self.log = device, quiet, log
        self.seconds: dict[str, float] = {}

    def __call__(self, label: str, *args):
        args = [str(a) for a in args]
        start = time.perf_counter()
        status = self.runner.run(args)
        took = time.perf_counter() - start
        self.seconds[label] = self.seconds.get(label, 0.0) + took
        with self.log.open("a") as f:
            f.write(json.dumps({"label": label, "args": args, "status": status, "seconds": round(took, 2)}) + "\n")
        if not self.quiet:
            print(f"[{took:6.1f} s] {label}: {status}", flush=True)
        if status != "ok":
            raise RuntimeError(f"d2it {' '.join(args)} failed: {status}")


def sets(items) -> list[str]:
    """`--set` pairs."""
    return [a for s in items for a in ("--set", s)]


@attrs.define
class Bench:
    """One run: the work folder, the profile, the data and every measurement."""

    profile: Profile
    data: str
    heldout: str
    seeds: tuple
    work: Path
    device: str
    quiet: bool
    data_options: tuple = ()
    reference: torch.Tensor | None = None  # the held-out images every score is against
    inception: object = None  # InceptionScores with --inception-weights
    samples: dict = attrs.field(factory=dict)  # (label, seed) -> (16 images, their grain maps) for the grid
    result: dict = attrs.field(factory=dict)
    run: Commands = None

    def __attrs_post_init__(self):
        self.work.mkdir(parents=True, exist_ok=True)
        self.run = Commands(self.device, self.quiet, self.work / "commands.jsonl")

    def common(self) -> list:
        p = self.profile
        opts = [a for o in self.data_options for a in ("--data-option", o)]
        return ["--device", self.device, "--quiet", *(["--workers", p.workers] if p.workers else [])], opts

    # -- building ------------------------------------------------------------------------------------

    def build(self, name: str, vae: str, vae_sets, routed: bool, refine: str = "window16") -> Path:
        p, out = self.profile, self.work / name
        routing = ["--refine", refine, "--grain", "dgt-s", *sets(p.grain)] if routed else []
        self.run(
            f"build {name}",
            "build", "--vae", vae, "--backbone", "dit-s", *routing, "--image-size", p.image_size,
            "--num-classes", 1, *sets(vae_sets), *sets(p.backbone(routed)), "--out", out, "--overwrite",
        )  # fmt: skip
        return out

    def train_vae(self, system: Path, *extra):
        p = self.profile
        flags, opts = self.common()
        self.run(
            f"train dvae {system.name}",
            "train", "dvae", "--system", system, "--data", self.data, *opts, "--steps", p.vae_steps,
            "--batch", p.vae_batch, "--lr", p.vae_lr, "--perceptual-weight", 0, "--disc-start", p.vae_steps + 1,
            "--log-every", max(1, p.vae_steps // 20), "--sample-every", p.vae_steps, "--ckpt-every", p.vae_steps,
            "--seed", 0, "--save-to-system", "--overwrite", *extra, *flags,
        )  # fmt: skip

    def encode(self, system: Path) -> Path:
        flags, opts = self.common()
        cache = system / "cache"
        self.run(
            f"encode {system.name}",
            "encode", "--system", system, "--data", self.data, *opts, "--out", cache, "--overwrite",
            "--batch", 64, "--seed", 0, *flags,
        )  # fmt: skip
        return cache

    def clone(self, source: Path, name: str, seed: int) -> Path:
        """A copy of a system folder without runs or caches, its content model freshly initialised from `seed`."""
        from d2it import system as systems
        from d2it.parts import save_part

        target = self.work / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("runs", "cache", "*.lock", ".d2it*"))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            content = systems.build(systems.read_record(target)[0]).content
        save_part(target, "content", {k: v.detach() for k, v in content.state_dict().items()})
        return target

    def train_content(self, system: Path, cache: Path, steps: int, seed: int, resume: bool, *extra):
        p = self.profile
        flags, _ = self.common()
        self.run(
            f"train content {system.name}",
            "train", "content", "--system", system, "--cache", cache, "--steps", steps,
            "--batch", p.content_batch, "--lr", p.content_lr, "--ema-decay", p.ema_decay,
            "--log-every", max(1, p.content_steps // 20), "--sample-every", 0, "--ckpt-every", steps,
            "--seed", seed, "--save-to-system", *(["--resume", "latest"] if resume else ["--overwrite"]), *extra,
            *flags,
        )  # fmt: skip

    def train_grain(self, system: Path, cache: Path, seed: int):
        p = self.profile
        flags, _ = self.common()
        self.run(
            f"train grain {system.name}",
            "train", "grain", "--system", system, "--cache", cache, "--steps", p.grain_steps,
            "--batch", p.grain_batch, "--lr", p.grain_lr, "--ema-decay", p.grain_ema_decay,
            "--log-every", max(1, p.grain_steps // 10),
            "--sample-every", 0, "--ckpt-every", p.grain_steps, "--seed", seed, "--save-to-system", "--overwrite",
            *flags,
        )  # fmt: skip


# -------------------------------------------------------------------------------------------- scoring


def load_images(spec: str, size: int, options=()) -> torch.Tensor:
    """Every image of a `--data` value, float (N, 3, size, size) in [-1, 1], in stored order."""
    from d2it_cli.data import data_options, first_items, open_dataset

    dataset = open_dataset(spec, size, train=False, options=data_options(spec, False, options))
    items = first_items(dataset, len(dataset) if hasattr(dataset, "__len__") else 10**6)
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def spread(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` images spread evenly over a set (sorted file names group alike images: flags, keycaps, faces)."""
    if len(images) <= count:
        return images
    return images[torch.linspace(0, len(images) - 1, count).round().long()]


def swd_with_spread(images: torch.Tensor, reference: torch.Tensor, bootstrap: int, seed: int = 0) -> dict:
    """SWD x10³ per level and mean, plus the standard deviation of the mean over bootstrap resamples of `images`."""
    from d2it_cli.evaluation.swd import sliced_wasserstein

    out = sliced_wasserstein(images, reference, seed=seed)
    g = torch.Generator().manual_seed(seed)
    boots = []
    for _ in range(bootstrap):
        pick = torch.randint(images.shape[0], (images.shape[0],), generator=g)
        boots.append(sliced_wasserstein(images[pick], reference, seed=seed)["swd"])
    out["swd_boot_std"] = float(np.std(boots, ddof=1)) if len(boots) > 1 else None
    return out


class InceptionScores:
    """FID and KID against the reference, with a local Inception weights file (only with --inception-weights)."""

    def __init__(self, weights: str, reference: torch.Tensor, device: str):
        from d2it.registry import default_registry
        from d2it_cli.evaluation.extractor import Extractor

        registry = default_registry()
        self.fid, self.kid = registry.create("metric", "fid"), registry.create("metric", "kid")
        self.layers = {"fid": "2048", "kid": "2048"}
        self.extractor = Extractor("inception-v3-compat", set(self.layers.values()), weights, device)
        self.ref = self.features(reference)

    def features(self, images: torch.Tensor):
        from d2it_cli.evaluation.extractor import FeatureAccumulator
        from d2it_cli.evaluation.metrics import FeatureSet
        from d2it_cli.images import to_uint8

        acc = FeatureAccumulator(self.extractor)
        for i in range(0, images.shape[0], 100):
            acc.add(torch.from_numpy(to_uint8(images[i : i + 100])).permute(0, 3, 1, 2).contiguous())
        return FeatureSet(acc.features())

    def __call__(self, images: torch.Tensor) -> dict:
        gen = self.features(images)
        fid = self.fid(gen, self.ref, self.layers["fid"], 0)["fid"]
        return {"fid": fid, "kid": self.kid(gen, self.ref, self.layers["kid"], 0)["kid"]}


class GroundTruthMaps(torch.nn.Module):
    """A grain 'predictor' that draws, per sample, one of the entropy coder's maps of real images."""

    def __init__(self, maps: torch.Tensor):
        super().__init__()
        self.maps = maps.long()

    def sample(self, classes, generator=None, **options):
        pick = torch.randint(self.maps.shape[0], (classes.shape[0],), generator=generator, device=generator.device)
        return self.maps[pick.cpu()].to(classes.device)


def grain_predictor(name: str, system, **options):
    """A registered grain predictor (random, all-fine, all-coarse) for a system's grid."""
    from d2it.registry import default_registry

    geo = system.geometry
    return default_registry().create(
        "grain_predictor", name, options, grid=geo.grid, grains=system.grains, num_classes=system.record.num_classes
    )


def reconstruct_all(system_dir: Path, images: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(reconstructions, grain maps) of images by a system's VAE, 64 at a time."""
    from d2it import system as systems
    from d2it_cli.evaluation.recon import reconstruct

    vae = systems.load(system_dir, parts=("vae",), device=device).vae.eval()
    recs, maps = [], []
    for i in range(0, images.shape[0], 64):
        rec, gm = reconstruct(vae, images[i : i + 64].to(device))
        recs.append(rec.float().clamp(-1, 1).cpu())
        if gm is not None:
            maps.append(gm.cpu())
    return torch.cat(recs), (torch.cat(maps) if maps else None)


def tokens_per_image(system_dir: Path, grain_maps) -> float:
    """Latent codes per image: one per coarse region, four per fine region (DVAE), or the grid's cells."""
    from d2it import system as systems

    record, _ = systems.read_record(system_dir)
    geo = systems.latent_geometry(record, systems.build_vae(record))
    if grain_maps is None or geo.grains == 1:
        return float(geo.latent_size**2)
    fine = grain_maps.float().mean().item()
    regions = grain_maps[0].numel()
    return regions * ((1 - fine) * 1 + fine * 4)


def content_gmacs(system_dir: Path) -> float:
    """Forward GMACs of a system's content model for one sample (d2it's counter, attention included)."""
    from d2it import system as systems
    from d2it_cli.build import count_system

    rows = count_system(systems.load(system_dir))
    return next(r["gmacs"] for r in rows if r["part"] == "content")


def generate_images(system_dir: Path, num: int, seed: int, profile: Profile, device: str, grain=None):
    """`num` unconditional samples of a system (its own grain predictor, or `grain`), images and grain maps."""
    from d2it import system as systems
    from d2it_sampling.pipeline import generate

    system = systems.load(system_dir, device=device).eval()
    if grain is not None:
        system.grain = grain(system) if callable(grain) and not isinstance(grain, torch.nn.Module) else grain
    out = generate(
        system, [0] * num, seed=seed, steps=profile.sample_steps, sampler=profile.sampler, cfg_scale=1.0,
        batch_size=profile.sample_batch, progress=False,
    )  # fmt: skip
    return out.images, out.grain_maps


# --------------------------------------------------------------------------------------------- stages


def stage1(b: Bench) -> dict:
    """Thresholds, the four autoencoders, their held-out reconstruction scores; returns the system folders."""
    p = b.profile
    flags, opts = b.common()
    d2it = b.build("d2it", "dvae-kl", p.dvae, routed=True)
    learned = b.build("dvae-learned-logvar", "dvae-kl", p.dvae, routed=True)
    f8 = b.build("dit", "vae-f8", fixed_grain(p.dvae, 8), routed=False)
    f16 = b.build("ae-f16", "vae-f8", fixed_grain(p.dvae, 16), routed=False)
    b.run("thresholds", "thresholds", "--data", b.data, *opts, "--system", d2it, "--out", d2it / "thresholds.json",
          "--device", b.device, "--quiet")  # fmt: skip
    from d2it import system as systems

    thresholds = systems.read_record(d2it)[0].thresholds
    systems.update_record(learned, thresholds=thresholds)
    b.train_vae(d2it)
    b.train_vae(learned, "--learn-logvar")
    b.train_vae(f8)
    b.train_vae(f16)
    rows = {}
    for label, system in (("DVAE (8x/16x), logvar fixed", d2it), ("DVAE (8x/16x), logvar learned", learned),
                          ("KL-AE 8x", f8), ("KL-AE 16x", f16)):  # fmt: skip
        recon, maps = reconstruct_all(system, b.reference, b.device)
        from d2it_cli.evaluation.metrics import psnr, ssim

        row = {
            "system": system.name,
            "psnr": float(psnr(recon, b.reference).mean()),
            "ssim": float(ssim(recon, b.reference).mean()),
            **sliced(recon, b.reference),
            "tokens": tokens_per_image(system, maps),
            "fine_ratio": float(maps.float().mean()) if maps is not None else None,
        }
        if b.inception is not None:
            row.update(b.inception(recon))
        rows[label] = row
    b.result["stage1"] = rows
    return {"d2it": d2it, "dit": f8}


def sliced(images, reference) -> dict:
    """SWD of a set against the reference (no bootstrap: reconstructions are paired with their inputs)."""
    from d2it_cli.evaluation.swd import sliced_wasserstein

    return sliced_wasserstein(images, reference, seed=0)


def score(b: Bench, rows: dict, label: str, seed: int, images: torch.Tensor, maps=None):
    """Add a model's row: SWD with bootstrap spread, FID/KID if asked, its maps' fine ratio; keep 16 for the grid."""
    row = swd_with_spread(images, b.reference, b.profile.bootstrap)
    if maps is not None:
        row["fine_ratio"] = float(maps.float().mean())
    if b.inception is not None:
        row.update(b.inception(images))
    b.samples[(label, seed)] = (images[:16], None if maps is None else maps[:16])
    rows[(label, seed)] = row


def segments(total: int, fractions) -> list[int]:
    """Distinct step counts at the given fractions of `total` (always ending at `total`)."""
    return sorted({max(1, round(total * f)) for f in fractions} | {total})


def stage2(b: Bench, base: dict) -> None:
    """Grain and content transformers per seed; samples for the table, the ablations and the compute curve."""
    from d2it import system as systems

    p = b.profile
    caches = {"d2it": b.encode(base["d2it"]), "dit": b.encode(base["dit"])}
    route = b.build("d2it-routing", "dvae-kl", p.dvae, routed=True, refine="none")
    record = systems.read_record(base["d2it"])[0]
    shutil.copy2(base["d2it"] / "vae.safetensors", route / "vae.safetensors")
    systems.update_record(route, thresholds=record.thresholds, latent_scale=record.latent_scale)
    gmacs = {"d2it": content_gmacs(base["d2it"]), "routing": content_gmacs(route), "dit": content_gmacs(base["dit"])}
    steps = p.content_steps
    dit_steps = round(steps * gmacs["d2it"] / gmacs["dit"])  # equal training compute
    b.result["gmacs"] = gmacs
    b.result["steps"] = {"d2it": steps, "dit_equal_steps": steps, "dit_equal_compute": dit_steps}
    _, gt_maps = reconstruct_all(base["d2it"], b.reference, b.device)
    fine = float(gt_maps.float().mean())  # the held-out fine ratio, for the random maps
    rows, curves = {}, {"D²iT-S": [], "DiT-S/2": []}
    for seed in b.seeds:
        full = b.clone(base["d2it"], f"d2it-s{seed}", seed)
        b.train_grain(full, caches["d2it"], seed)
        sample_seed = 1000 + seed
        # full D²iT, trained in segments for the compute curve (a resume is the same run)
        done = 0
        for target in segments(steps, p.curve):
            b.train_content(full, caches["d2it"], target, seed, done > 0)
            done = target
            if target < steps:
                imgs, _ = generate_images(full, p.curve_samples, sample_seed, p, b.device)
                curves["D²iT-S"].append((seed, target * p.content_batch * gmacs["d2it"], sliced(imgs, b.reference)))
        imgs, maps = generate_images(full, p.num_samples, sample_seed, p, b.device)
        compute = steps * p.content_batch * gmacs["d2it"]
        curves["D²iT-S"].append((seed, compute, sliced(imgs[: p.curve_samples], b.reference)))
        score(b, rows, "D²iT-S (grain transformer maps)", seed, imgs, maps)
        for label, grain in (
            ("D²iT-S, ground-truth maps", GroundTruthMaps(gt_maps)),
            (f"D²iT-S, random maps (r={fine:.2f})", lambda s: grain_predictor("random", s, ratio=fine)),
            ("D²iT-S, all-fine maps", lambda s: grain_predictor("all-fine", s)),
            ("D²iT-S, all-coarse maps", lambda s: grain_predictor("all-coarse", s)),
        ):
            imgs, maps = generate_images(full, p.num_samples, sample_seed, p, b.device, grain=grain)
            score(b, rows, label, seed, imgs, maps)
        # routing only, and without the dynamic grain loss (same grain transformer)
        routing = b.clone(route, f"d2it-routing-s{seed}", seed)
        shutil.copy2(full / "grain.safetensors", routing / "grain.safetensors")
        b.train_content(routing, caches["d2it"], steps, seed, False)
        imgs, maps = generate_images(routing, p.num_samples, sample_seed, p, b.device)
        score(b, rows, "routing only (--refine none)", seed, imgs, maps)
        plain = b.clone(base["d2it"], f"d2it-cell-loss-s{seed}", seed)
        shutil.copy2(full / "grain.safetensors", plain / "grain.safetensors")
        b.train_content(plain, caches["d2it"], steps, seed, False, "--grain-loss", "cell")
        imgs, maps = generate_images(plain, p.num_samples, sample_seed, p, b.device)
        score(b, rows, "D²iT-S without the dynamic grain loss", seed, imgs, maps)
        # DiT-S/2 on the 8x autoencoder: equal steps on the way to equal compute
        dit = b.clone(base["dit"], f"dit-s{seed}", seed)
        done = 0
        for target in sorted(set(segments(steps, p.curve)) | {dit_steps}):
            b.train_content(dit, caches["dit"], target, seed, done > 0)
            done = target
            compute = target * p.content_batch * gmacs["dit"]
            if target == steps:
                imgs, _ = generate_images(dit, p.num_samples, sample_seed, p, b.device)
                score(b, rows, "DiT-S/2, equal steps", seed, imgs)
                curves["DiT-S/2"].append((seed, compute, sliced(imgs[: p.curve_samples], b.reference)))
            elif target == dit_steps:
                imgs, _ = generate_images(dit, p.num_samples, sample_seed, p, b.device)
                score(b, rows, "DiT-S/2, equal compute", seed, imgs)
                curves["DiT-S/2"].append((seed, compute, sliced(imgs[: p.curve_samples], b.reference)))
            else:
                imgs, _ = generate_images(dit, p.curve_samples, sample_seed, p, b.device)
                curves["DiT-S/2"].append((seed, compute, sliced(imgs, b.reference)))
    b.result["stage2"] = [{"model": label, "seed": seed, **row} for (label, seed), row in rows.items()]
    b.result["curves"] = {k: [{"seed": s, "gmacs_x_images": c, **v} for s, c, v in pts] for k, pts in curves.items()}


# --------------------------------------------------------------------------------------------- report


def fmt(v, digits: int = 2) -> str:
    """A number for the table ('–' for None)."""
    return "–" if v is None else f"{v:.{digits}f}"


def stage1_table(b: Bench) -> str:
    levels = [k for k in next(iter(b.result["stage1"].values())) if k.startswith("swd_")]
    extra = ["FID"] if b.inception is not None else []
    headers = ["autoencoder", "tokens / image", "fine ratio", "PSNR (dB)", "SSIM", "SWD", *levels, *extra]
    rows = []
    for label, r in b.result["stage1"].items():
        rows.append([label, fmt(r["tokens"], 1), fmt(r["fine_ratio"]), fmt(r["psnr"]), fmt(r["ssim"], 3),
                     fmt(r["swd"]), *(fmt(r[k]) for k in levels), *([fmt(r.get("fid"))] if extra else [])])  # fmt: skip
    return markdown_table(headers, rows)


def stage2_summary(b: Bench) -> list[dict]:
    """One entry per model: SWD and per-level means over seeds, the spread over seeds, the mean bootstrap std."""
    by_model: dict = {}
    for row in b.result["stage2"]:
        by_model.setdefault(row["model"], []).append(row)
    out = []
    for model, rows in by_model.items():
        keys = [k for k in rows[0] if k.startswith("swd_") and k != "swd_boot_std"]
        entry = {"model": model, "seeds": [r["seed"] for r in rows]}
        for k in ["swd", *keys, "fine_ratio", "fid", "kid"]:
            vals = [r[k] for r in rows if r.get(k) is not None]
            entry[k] = float(np.mean(vals)) if vals else None
        swds = [r["swd"] for r in rows]
        entry["seed_spread"] = float(np.std(swds, ddof=1)) if len(swds) > 1 else None
        entry["per_seed"] = swds
        boots = [r["swd_boot_std"] for r in rows if r["swd_boot_std"] is not None]
        entry["boot_std"] = float(np.mean(boots)) if boots else None
        out.append(entry)
    return out


def stage2_table(b: Bench, summary: list[dict]) -> str:
    levels = [k for k in summary[0] if k.startswith("swd_")]
    extra = ["FID", "KID"] if b.inception is not None else []
    headers = ["model", "SWD (mean of seeds)", "per seed", "seed std", "bootstrap std", *levels, "fine ratio", *extra]
    rows = []
    for e in summary:
        rows.append([e["model"], fmt(e["swd"]), " / ".join(fmt(v) for v in e["per_seed"]), fmt(e["seed_spread"]),
                     fmt(e["boot_std"]), *(fmt(e[k]) for k in levels), fmt(e["fine_ratio"]),
                     *([fmt(e.get("fid")), fmt(e.get("kid"), 4)] if extra else [])])  # fmt: skip
    return markdown_table(headers, rows)


def grid_figure(b: Bench, path: Path):
    """Held-out real images, then each model's samples (D²iT rows also with their grain maps), one row each."""
    from d2it_cli.images import grain_overlay, label_image, make_grid, to_uint8, upscale, vstack

    zoom = max(1, 128 // b.profile.image_size)
    real = to_uint8(spread(b.reference, 16))
    rows = [label_image(upscale(make_grid(real, nrow=16), zoom), "held-out real images")]
    for (label, seed), (images, maps) in b.samples.items():
        if seed != b.seeds[0]:
            continue
        label = label.replace("²", "2")  # Pillow's default font has no superscript two
        rows.append(label_image(upscale(make_grid(to_uint8(images), nrow=16), zoom), label))
        if maps is not None:
            overlay = grain_overlay(to_uint8(images), maps, grains=2)
            rows.append(label_image(upscale(make_grid(overlay, nrow=16), zoom), f"{label}: grain maps (red fine)"))
    from PIL import Image

    Image.fromarray(vstack(rows)).save(path)


def curve_figure(b: Bench, path: Path):
    """SWD against training compute for D²iT-S and DiT-S/2 (mean over seeds at each point)."""
    from d2it_cli.images import plot_curves

    series = {}
    for model, pts in b.result["curves"].items():
        by_x: dict = {}
        for p in pts:
            by_x.setdefault(p["gmacs_x_images"], []).append(p["swd"])
        series[model.replace("²", "2")] = [(x / 1e3, float(np.mean(v))) for x, v in sorted(by_x.items())]
    plot_curves(series, path, title="SWD x10^3 vs training compute", xlabel="TMACs (forward GMACs x images)",
                ylabel="SWD x10^3")  # fmt: skip


def write_results(b: Bench, name: str, seconds: float) -> str:
    """results/<name>.json and .md, the grid and the curve; returns the Markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = stage2_summary(b)
    b.result["stage2_summary"] = summary
    b.result["seconds"] = round(seconds, 1)
    b.result["command_seconds"] = {k: round(v, 1) for k, v in b.run.seconds.items()}
    grid, curve = RESULTS / f"{name}-grid.png", RESULTS / f"{name}-curve.png"
    grid_figure(b, grid)
    curve_figure(b, curve)
    p = b.profile
    md = "\n\n".join(
        [
            f"# D²iT against DiT on real images ({name}; {b.result['machine']['device']}, {seconds / 60:.1f} min)",
            f"Data `{b.data}` (held out: `{b.heldout}`, {len(b.reference)} images), {p.image_size} px; "
            f"seeds {', '.join(map(str, b.seeds))}; sampler {p.sampler}, {p.sample_steps} steps, "
            f"{p.num_samples} samples per model; SWD x10³ (lower is better) per level and mean; real-vs-real floor "
            f"(as many training images, spread over the split, against the held-out split): "
            f"{fmt(b.result['floor']['swd'])}.",
            "## Stage 1: autoencoders (held-out reconstructions)",
            stage1_table(b),
            f"## Stage 2: generation (D²iT {p.content_steps} steps; DiT-S/2 {b.result['steps']['dit_equal_compute']} "
            f"steps at equal compute; content GMACs per image: "
            + ", ".join(f"{k} {v:.3f}" for k, v in b.result["gmacs"].items())
            + ")",
            stage2_table(b, summary),
            f"![samples]({grid.name})\n\n![curve]({curve.name})",
        ]
    )
    (RESULTS / f"{name}.json").write_text(json.dumps(b.result, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(md + "\n")
    return md


def main(argv=None, quick: bool = False):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="the profile's code path at tiny sizes")
    parser.add_argument("--data", default="openmoji", help="training images (any --data value)")
    parser.add_argument("--data-option", action="append", default=[], help="dataset option KEY=VALUE")
    parser.add_argument("--heldout", default=None, help="held-out images to score against (openmoji: its test split)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights: adds FID/KID")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--work", default=None, help="folder for the systems (default: a temporary one)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    from d2it.system import torch_device

    heldout = args.heldout
    if heldout is None:
        if args.data.split(":")[0] != "openmoji":
            parser.error("--heldout is needed for data other than openmoji (a folder no model trains on)")
        heldout = "openmoji:test"
    profile = PROFILES[args.profile]
    dry_run = args.dry_run or quick
    if dry_run:
        profile = dry(profile)
    device = str(torch_device(args.device))
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    name = f"paper-{args.profile}" + ("-quick" if dry_run else "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d2it-paper-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        reference = load_images(heldout, profile.image_size)
        if dry_run:
            reference = reference[: max(profile.num_samples, 16)]
        b = Bench(profile, args.data, heldout, seeds, work, device, quiet=not args.verbose,
                  data_options=tuple(args.data_option), reference=reference)  # fmt: skip
        if args.inception_weights:
            b.inception = InceptionScores(args.inception_weights, reference, device)
        b.result.update(profile=attrs.asdict(profile), data=args.data, heldout=heldout, seeds=seeds)
        b.result["machine"] = machine(device, load_average_start=os.getloadavg())
        train_like = spread(load_images(args.data, profile.image_size, args.data_option), len(b.reference))
        b.result["floor"] = sliced(train_like, b.reference)
        base = stage1(b)
        stage2(b, base)
        b.result["machine"]["load_average_end"] = os.getloadavg()
        md = write_results(b, name, time.perf_counter() - start)
    print(md)
    print(f"\nwrote {RESULTS / name}.json, .md, -grid.png and -curve.png")
    return b.result


def run(quick: bool = False, argv=()):
    """The runner's entry point (`python benchmarks/run.py paper [--quick] [options]`)."""
    return main(list(argv), quick=quick)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
