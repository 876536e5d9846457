"""`d2it demo`: the whole D²iT pipeline on real images (`openmoji`) or `synthetic` data, run through the real commands.

build → thresholds → train dvae → encode → train grain → train content → sample, each step one
`d2it` command run in this process by a `runner` (the command line's click group, see
`d2it_cli.commands.demo.ClickRunner`), then an index.html with samples, grain maps,
reconstructions, loss curves, the sliced Wasserstein distance to held-out images (openmoji) and a
timing table. Sizes are chosen per device so that the CPU run (64x64 images, a narrow VAE, few
sampling steps) fits in about ten minutes on two cores (`--quick`: about three).
"""

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Protocol

import attrs

from d2it.errors import D2itError
from d2it.io import atomic_write_text
from d2it.system import torch_device
from d2it_cli.demo.report import StepTiming, report_sections, write_report

# steps of the pipeline, in order (the timing table uses these names)
STEP_NAMES = ("build", "thresholds", "train dvae", "encode", "train grain", "train content", "sample", "report")
# the datasets the demo knows: openmoji (real emoji, unconditional, held-out split) and synthetic (4 classes)
DATASETS = ("openmoji", "synthetic")


class DemoError(D2itError):
    """A step of the demo failed."""


class Runner(Protocol):
    """Runs `d2it` commands in this process."""

    def run(self, args: list[str]) -> str:
        """Run `d2it ARGS`; "ok", or why it failed ("failed: ...")."""

    def accepts(self, path: list[str], option: str) -> bool:
        """True when the subcommand at `path` (e.g. ["train", "content"]) takes `option`."""


@attrs.frozen
class DemoPlan:
    """Every size and step count of one demo run."""

    data: str = "synthetic"  # one of DATASETS
    image_size: int = 32
    num_images: int = 512  # openmoji: the first N of the train split (0 = all of it)
    num_classes: int = 4  # the synthetic dataset's default
    vae: tuple = ()  # --set vae.* overrides
    backbone: tuple = ()
    refine: tuple = ()
    grain: tuple = ()
    dvae_steps: int = 800
    dvae_batch: int = 16
    dvae_lr: float = 1e-3
    grain_steps: int = 300
    grain_lr: float = 1e-3
    content_lr: float = 5e-4
    grain_batch: int = 32
    content_steps: int = 1500
    content_batch: int = 32
    content_ema_decay: float = 0.995
    grain_ema_decay: float = 0.99
    sample_num: int = 32
    sample_steps: int = 100
    sampler: str = ""  # sampler component for `d2it sample` ("" = the system's default)
    sample_batch: int = 32
    cfg_scale: float = 2.0
    log_every: int = 10
    workers: int = 0  # data-loading processes of the trainers

    def summary(self) -> dict:
        """JSON-ready settings."""
        return attrs.asdict(self)


# CPU sizes: 64x64 images (16 regions per image, so grain maps have structure) with a narrow VAE.
TINY_VAE = (
    "vae.base_width=16",
    "vae.channel_mult=1,2,2,4,4",
    "vae.num_res_blocks=1",
    "vae.attn_levels=0",
    "vae.mid_attn=false",
    "vae.decoder_mult=1,2,2,4",
    "vae.norm_groups=8",
)
TINY_BACKBONE = ("backbone.depth=4", "backbone.hidden_size=192", "backbone.num_heads=3", "backbone.refine_depth=1")
TINY_GRAIN = ("grain.depth=2", "grain.hidden_size=64", "grain.num_heads=2")

SMALL_VAE = (
    "vae.base_width=64",
    "vae.channel_mult=1,2,2,4,4",
    "vae.num_res_blocks=1",
    "vae.attn_levels=1",
    "vae.decoder_mult=1,2,2,4",
    "vae.norm_groups=16",
)
SMALL_BACKBONE = ("backbone.depth=6", "backbone.hidden_size=384", "backbone.num_heads=6", "backbone.refine_depth=2")
SMALL_GRAIN = ("grain.depth=4", "grain.hidden_size=128", "grain.num_heads=4")


def plan_for(device: str, quick: bool, data: str = "openmoji") -> DemoPlan:
    """The sizes for `data`: tiny on CPU (smaller still with --quick), 64x64 images and larger models on a GPU."""
    if data not in DATASETS:
        raise D2itError(f"the demo trains on one of {', '.join(DATASETS)}, got {data!r}")
    plan = _synthetic_plan(device, quick) if data == "synthetic" else _openmoji_plan(device, quick)
    return attrs.evolve(plan, data=data)


def _openmoji_plan(device: str, quick: bool) -> DemoPlan:
    """Sizes for the emoji: one class (no guidance), the whole train split, dpmpp-2m sampling.

    Against the synthetic plan the CPU budget moves from sampling (25 unguided dpmpp-2m steps instead of 50
    guided DDIM ones) to the DVAE, the bottleneck here: after 300 steps it keeps outlines but not yet colours.
    """
    unconditional = {"num_images": 0, "num_classes": 1, "cfg_scale": 1.0, "sampler": "dpmpp-2m"}
    if device.startswith("cuda"):
        return attrs.evolve(_synthetic_plan(device, quick), **unconditional, sample_steps=50)
    if quick:
        return DemoPlan(
            image_size=64,
            vae=TINY_VAE,
            backbone=TINY_BACKBONE,
            grain=TINY_GRAIN,
            dvae_steps=200,
            dvae_lr=2e-3,
            grain_steps=100,
            content_steps=300,
            sample_num=32,
            sample_steps=15,
            sample_batch=32,
            content_ema_decay=0.98,
            grain_ema_decay=0.95,
            log_every=10,
            **unconditional,
        )
    return DemoPlan(
        image_size=64,
        vae=TINY_VAE,
        backbone=TINY_BACKBONE,
        grain=TINY_GRAIN,
        dvae_steps=1000,
        dvae_lr=2e-3,
        grain_steps=300,
        content_steps=1200,
        sample_num=64,
        sample_steps=25,
        sample_batch=32,
        log_every=20,
        **unconditional,
    )


def _synthetic_plan(device: str, quick: bool) -> DemoPlan:
    """Sizes for the class-conditional synthetic data (4 classes, guidance 2)."""
    if device.startswith("cuda"):
        # stage 2 is bound by data loading here, so the batches stay moderate and loading uses workers
        if quick:
            return DemoPlan(
                image_size=64,
                num_images=2000,
                vae=SMALL_VAE,
                backbone=SMALL_BACKBONE,
                grain=SMALL_GRAIN,
                dvae_steps=1000,
                dvae_batch=32,
                grain_steps=500,
                grain_batch=64,
                content_steps=2000,
                content_batch=64,
                content_ema_decay=0.995,
                sample_num=64,
                sample_steps=100,
                sample_batch=64,
                log_every=25,
                workers=4,
            )
        return DemoPlan(
            image_size=64,
            num_images=4000,
            vae=SMALL_VAE,
            backbone=SMALL_BACKBONE,
            grain=SMALL_GRAIN,
            dvae_steps=3000,
            dvae_batch=32,
            grain_steps=1500,
            grain_batch=64,
            content_steps=6000,
            content_batch=64,
            content_ema_decay=0.998,
            sample_num=64,
            sample_steps=250,
            sample_batch=64,
            log_every=50,
            workers=4,
        )
    if quick:
        return DemoPlan(
            image_size=64,
            vae=TINY_VAE,
            backbone=TINY_BACKBONE,
            grain=TINY_GRAIN,
            num_images=256,
            dvae_steps=200,
            dvae_lr=2e-3,
            grain_steps=100,
            content_steps=300,
            sample_num=16,
            sample_steps=25,
            sampler="ddim",
            sample_batch=16,
            content_ema_decay=0.98,
            grain_ema_decay=0.95,
            log_every=10,
        )
    return DemoPlan(
        image_size=64,
        vae=TINY_VAE,
        backbone=TINY_BACKBONE,
        grain=TINY_GRAIN,
        num_images=512,
        dvae_steps=600,
        dvae_lr=2e-3,
        grain_steps=300,
        content_steps=1000,
        sample_num=32,
        sample_steps=50,
        sampler="ddim",
        log_every=20,
    )


def override_plan(plan: DemoPlan, items) -> DemoPlan:
    """Apply `key=value` overrides (numbers for numeric settings, comma-separated --set items for vae/backbone/...)."""
    fields = {f.name: f for f in attrs.fields(DemoPlan)}
    changes = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if key == "data":
            raise D2itError("choose the demo's data with --data, not --plan data=...")
        if not sep or key not in fields:
            raise D2itError(f"--plan expects KEY=VALUE with KEY one of {', '.join(fields)}, got {item!r}")
        kind = type(getattr(plan, key))
        try:
            changes[key] = tuple(v for v in value.split(";") if v) if kind is tuple else kind(value)
        except ValueError:
            raise D2itError(f"--plan {key} expects {kind.__name__}, got {value!r}") from None
    return attrs.evolve(plan, **changes)


@attrs.define
class Demo:
    """Runs the demo's steps through a `Runner` of `d2it` commands and records what each took."""

    runner: Runner | None
    out: Path
    plan: DemoPlan
    device: str
    seed: int = 0
    quiet: bool = False
    timings: list = attrs.field(factory=list)
    results: dict = attrs.field(factory=dict)  # numbers the report measured (SWD, reconstruction error, ...)

    @property
    def system_dir(self) -> Path:
        """The model directory the demo builds and trains."""
        return self.out / "system"

    @property
    def cache_dir(self) -> Path:
        """The latent cache written by `d2it encode`."""
        return self.out / "cache"

    @property
    def samples_dir(self) -> Path:
        """Where `d2it sample` writes."""
        return self.out / "samples"

    @property
    def data(self) -> str:
        """The `--data` value of every step that reads training images."""
        if self.plan.data == "synthetic":
            return f"synthetic:{self.plan.num_images}"
        return self.plan.data

    @property
    def data_options(self) -> dict:
        """`--data-option` settings of the training data (openmoji: the first num_images of the split)."""
        if self.plan.data != "synthetic" and self.plan.num_images:
            return {"limit": self.plan.num_images}
        return {}

    @property
    def heldout(self) -> str | None:
        """The `--data` value of the held-out images the report compares with (None: no held-out split)."""
        return None if self.plan.data == "synthetic" else f"{self.plan.data}:test"

    def data_args(self) -> list:
        """`--data` and `--data-option` arguments of the training data."""
        return ["--data", self.data, *(a for k, v in self.data_options.items() for a in ("--data-option", f"{k}={v}"))]

    def invoke(self, name: str, args: list[str]):
        """Run `d2it ARGS` in this process, timing it; a failing command stops the demo with its step named."""
        args = [str(a) for a in args]
        shown = "d2it " + " ".join(shlex.quote(a) for a in args)
        if not self.quiet:
            print(f"\n== {name}: {shown}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        status = self.runner.run(args)
        seconds = time.perf_counter() - start
        self.timings.append(StepTiming(name=name, command=shown, seconds=seconds, status=status))
        if status != "ok":
            raise DemoError(f"demo step '{name}' failed ({status}); see the messages above")
        return seconds

    def supports(self, path: list[str], option: str) -> bool:
        """True when the subcommand at `path` (e.g. ["train", "dvae"]) accepts `option`."""
        return self.runner.accepts(path, option)

    def stage2_lr(self, trainer: str) -> list[str]:
        """`--lr` for a stage-2 trainer when that trainer has the option (its default, 1e-4, is slow for a demo)."""
        lr = self.plan.grain_lr if trainer == "grain" else self.plan.content_lr
        return ["--lr", lr] if self.supports(["train", trainer], "--lr") else []

    def train_writes(self) -> list[str]:
        """A trainer writes its part into the system (the next step uses it), starting its run over on a rerun."""
        return ["--save-to-system", "--overwrite"]

    def common(self, workers: bool = True) -> list[str]:
        """Options every training/encoding step takes."""
        out = ["--device", self.device] + (["--workers", self.plan.workers] if workers and self.plan.workers else [])
        return out + (["--quiet"] if self.quiet else [])

    def run_pipeline(self):
        """Every command from `build` to `sample`, one stage after another."""
        for name, arguments in self.stages():
            self.invoke(name, arguments())

    def stages(self) -> list:
        """(step name, method giving its `d2it` arguments) of every stage, in order; arguments are made when it runs."""
        return [
            ("build", self.build_args),
            ("thresholds", self.thresholds_args),
            ("train dvae", self.train_dvae_args),
            ("encode", self.encode_args),
            ("train grain", lambda: self.stage2_args("grain")),
            ("train content", lambda: self.stage2_args("content")),
            ("sample", self.sample_args),
        ]

    def build_args(self) -> list:
        """`d2it build`: the system at the plan's sizes, replacing an earlier run's (a rerun starts over)."""
        p = self.plan
        parts = {"--vae": "dvae-kl", "--backbone": "dit-s", "--refine": "window16", "--grain": "dgt-s"}
        sizes = {"--image-size": p.image_size, "--num-classes": p.num_classes}
        sets = [a for s in (*p.vae, *p.backbone, *p.refine, *p.grain) for a in ("--set", s)]
        return ["build", *_options(parts), *_options(sizes), *sets, "--out", self.system_dir, "--overwrite"]

    def thresholds_args(self) -> list:
        """`d2it thresholds`: region entropies of the training images into the system record."""
        where = {"--system": self.system_dir, "--out": self.system_dir / "thresholds.json", "--device": self.device}
        return ["thresholds", *self.data_args(), *_options(where), *(["--quiet"] if self.quiet else [])]

    def train_dvae_args(self) -> list:
        """`d2it train dvae` (stage 1), without the perceptual loss and the discriminator."""
        p = self.plan
        schedule = {"--steps": p.dvae_steps, "--batch": p.dvae_batch, "--lr": p.dvae_lr, "--perceptual-weight": 0,
                    "--disc-start": p.dvae_steps + 1}  # fmt: skip
        every = {"--log-every": p.log_every, "--sample-every": p.dvae_steps, "--ckpt-every": p.dvae_steps}
        return ["train", "dvae", "--system", self.system_dir, *self.data_args(), *_options(schedule),
                *_options(every), "--seed", self.seed, *self.train_writes(), *self.common()]  # fmt: skip

    def encode_args(self) -> list:
        """`d2it encode`: the latent cache the stage-2 trainers read, replacing an earlier run's."""
        return ["encode", "--system", self.system_dir, *self.data_args(), "--out", self.cache_dir, "--batch", 64,
                "--overwrite", "--seed", self.seed, *self.common()]  # fmt: skip

    def stage2_args(self, trainer: str) -> list:
        """`d2it train grain` or `d2it train content` on the latent cache."""
        p = self.plan
        steps, batch, ema_decay = {
            "grain": (p.grain_steps, p.grain_batch, p.grain_ema_decay),
            "content": (p.content_steps, p.content_batch, p.content_ema_decay),
        }[trainer]
        schedule = {"--steps": steps, "--batch": batch, "--ema-decay": ema_decay}
        previews = steps if trainer == "grain" else 0  # content: none, the sample step draws the samples
        every = {"--log-every": p.log_every, "--sample-every": previews, "--ckpt-every": steps}
        return ["train", trainer, "--system", self.system_dir, "--cache", self.cache_dir, *_options(schedule),
                *_options(every), "--seed", self.seed, *self.stage2_lr(trainer), *self.train_writes(),
                *self.common()]  # fmt: skip

    def sample_args(self) -> list:
        """`d2it sample`: the report's samples, evenly over the classes, with samples.npz."""
        p = self.plan
        sampling = {"--num": p.sample_num, "--classes-uniform": None, "--steps": p.sample_steps,
                    "--cfg-scale": p.cfg_scale, "--seed": self.seed, "--batch": p.sample_batch}  # fmt: skip
        return ["sample", "--system", self.system_dir, *_options(sampling), "--out", self.samples_dir, "--npz",
                "--no-resume", *(["--sampler", p.sampler] if p.sampler else []),
                *self.common(workers=False)]  # fmt: skip


def _options(values: dict) -> list:
    """["--name", value, ...] of {"--name": value}; a flag's value is None."""
    return [a for name, value in values.items() for a in ((name,) if value is None else (name, value))]


def run_demo(
    runner: Runner,
    out,
    *,
    device: str | None = None,
    quick: bool = False,
    seed: int = 0,
    quiet: bool = False,
    overrides=(),
    data: str = "openmoji",
) -> Path:
    """Run the whole demo on `data` into `out` with `runner` and return the path of its index.html."""
    device = str(torch_device(device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = override_plan(plan_for(device, quick, data), overrides)
    demo = Demo(runner=runner, out=out, plan=plan, device=device, seed=seed, quiet=quiet)
    start = time.perf_counter()
    failure = None
    try:
        demo.run_pipeline()
    except DemoError as exc:
        failure = exc
    report_start = time.perf_counter()
    sections = report_sections(demo)
    demo.timings.append(StepTiming(name="report", command="(index.html)", seconds=time.perf_counter() - report_start))
    index = write_report(demo, sections, failed=failure is not None)  # with the report's own time
    total = time.perf_counter() - start
    results = {"data": plan.data, **demo.results}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    summary = {
        "total_seconds": round(total, 2),
        "device": device,
        "quick": quick,
        "data": plan.data,
        "plan": plan.summary(),
        "steps": [attrs.asdict(t) for t in demo.timings],
        "results": results,
    }
    atomic_write_text(out / "timings.json", json.dumps(summary, indent=2) + "\n")
    if failure is not None:
        raise failure
    return index
