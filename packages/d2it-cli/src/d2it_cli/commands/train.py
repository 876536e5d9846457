"""`d2it train dvae|grain|content`: the trainers of both stages on one engine (single process or torchrun + DDP)."""

import json
from pathlib import Path

import click

from d2it import dist
from d2it_cli.commands.claims import hold
from d2it_cli.commands.params import (
    BATCH,
    DEVICE,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL,
)
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.config_file import CONFIG_OPTION, replay_options
from d2it_cli.data import data_options
from d2it_cli.engine import Trainer
from d2it_cli.engine.config import LR_SCALES, NAN_POLICIES, PRECISIONS, train_config
from d2it_cli.engine.ema import stale_ema
from d2it_cli.engine.stage1 import DVAETask
from d2it_cli.engine.stage2 import GRAIN_SOURCES, ContentTask, GrainTask
from d2it_sampling.diffusion import GRAIN_LOSSES

SYSTEM = click.option(
    "--system",
    "system_dir",
    required=True,
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory (from d2it build); --save-to-system writes the trained part back into it.",
)


def engine_options(*, batch: int, ema: bool, ema_decay: float, sample_every: int, warmup: str = "0"):
    """Decorator adding the shared training options (with per-trainer defaults) to a click command."""

    def decorate(fn):
        options = [
            CONFIG_OPTION,
            click.option(
                "--batch",
                default=batch,
                show_default=True,
                type=BATCH,
                help="Images per process per micro-batch.",
            ),
            click.option(
                "--grad-accum",
                default=1,
                show_default=True,
                type=POSITIVE_INT,
                help="Micro-batches per optimizer step.",
            ),
            click.option(
                "--global-batch",
                type=POSITIVE_INT,
                help="Samples per optimizer step over all processes (then --batch is the largest micro-batch); on "
                "--resume it changes the run's global batch (default: the checkpoint's).",
            ),
            click.option(
                "--lr-scale",
                type=click.Choice(LR_SCALES),
                default="none",
                show_default=True,
                help="How the learning rate follows a global batch changed on --resume: x1, x new/old or its root.",
            ),
            click.option("--steps", type=POSITIVE_INT, help="Optimizer steps to train for (overrides --epochs)."),
            click.option("--epochs", type=POSITIVE_FLOAT, help="Epochs to train for."),
            click.option(
                "--warmup", default=warmup, show_default=True, help="Linear warm-up: steps, or epochs as '0.5ep'."
            ),
            click.option("--resume", help="Continue from 'latest' (of --run-dir) or a checkpoint/run directory."),
            click.option(
                "--precision",
                type=click.Choice(PRECISIONS),
                default="auto",
                show_default=True,
                help="auto = bf16 autocast on CUDA, fp32 on CPU.",
            ),
            click.option(
                "--workers",
                type=click.IntRange(min=0),
                help="Data-loading processes per rank (default: the CPUs per local rank less one, at most 8).",
            ),
            click.option(
                "--report-to",
                multiple=True,
                help="Tracker for scalars and previews: none, tensorboard, wandb (repeatable; extras d2it-cli[NAME]).",
            ),
            click.option(
                "--log-every", default=50, show_default=True, type=POSITIVE_INT, help="Steps between log lines."
            ),
            click.option(
                "--sample-every",
                default=sample_every,
                show_default=True,
                type=NON_NEGATIVE_INT,
                help="Steps between preview grids (0 = never).",
            ),
            click.option(
                "--ckpt-every",
                default=1000,
                show_default=True,
                type=NON_NEGATIVE_INT,
                help="Steps between checkpoints.",
            ),
            click.option("--keep", type=POSITIVE_INT, help="Keep only the newest N checkpoints."),
            click.option("--ema/--no-ema", default=ema, show_default=True, help="Keep an EMA of the weights."),
            click.option("--ema-decay", default=ema_decay, show_default=True, type=UNIT_INTERVAL),
            click.option("--max-grad-norm", type=POSITIVE_FLOAT, help="Clip gradients to this norm."),
            click.option("--seed", default=0, show_default=True, type=SEED),
            click.option(
                "--run-dir",
                type=click.Path(file_okay=False),
                help="Logs, checkpoints, previews of this run (default SYSTEM/runs/<trainer>); one run per folder.",
            ),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Delete the run already in the run directory (the files d2it wrote) and start a new one.",
            ),
            click.option(
                "--save-to-system",
                is_flag=True,
                help="At the end, write the trained part (its EMA weights where kept) into the system directory.",
            ),
            click.option(
                "--device",
                type=DEVICE,
                help="cpu, cuda, cuda:1 ... (default: CUDA when available; torchrun: the local GPU).",
            ),
            click.option("--quiet", is_flag=True, help="No progress bar."),
            click.option("--compile", is_flag=True, help="torch.compile the model (eager fallback with a warning)."),
            click.option("--grad-checkpointing", is_flag=True, help="Recompute block activations in backward."),
            click.option("--tf32/--no-tf32", default=True, show_default=True, help="TF32 matmuls on CUDA."),
            click.option("--channels-last", is_flag=True, help="NHWC memory format for convolutions."),
            click.option(
                "--nan-policy",
                type=click.Choice(NAN_POLICIES),
                default="stop",
                show_default=True,
                help="On a non-finite loss: stop (naming the step and the last good checkpoint) or skip the step.",
            ),
            click.option(
                "--preempt-signal",
                "preempt_signals",
                multiple=True,
                help="Signal that checkpoints the step and stops with exit code 75 (repeatable; TERM, USR1, USR2, "
                "INT, HUP or none; default TERM and USR1, or $D2IT_PREEMPT_SIGNALS).",
            ),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _fit(task, config, part: str, system_dir):
    """Train `task` and print one summary line on rank 0."""
    config.options = replay_options(click.get_current_context())  # train.json records them for --config
    trainer = Trainer(task, config)
    history = trainer.fit()
    if not dist.is_main():
        return
    last = history[-1] if history else {}
    losses = {
        k: round(v, 6)
        for k, v in last.items()
        if k not in ("step", "epoch", "time", "lr_factor") and isinstance(v, float)
    }
    click.echo(f"trained {part} for {trainer.step} steps; last log {json.dumps(losses)}")
    for ema in trainer.ema.values():  # the trainers' default decay 0.9999 averages over ~10,000 steps
        warning = stale_ema(ema.decay, trainer.step)
        if warning:
            click.echo(f"warning: {warning}", err=True)
    if config.save_to_system:
        click.echo(f"wrote {system_dir}/{part}.safetensors; run directory {trainer.run_dir}")
        return
    click.echo(
        f"run directory {trainer.run_dir}; {system_dir} was not changed: --save-to-system writes the trained {part} "
        f"into it (on this finished run with --resume latest), d2it export --run {trainer.run_dir} --out DIR makes a "
        "new system"
    )


@click.group()
def train():
    """Train a part of a system: the DVAE (stage 1), then the grain and content transformers (stage 2)."""


@train.command()
@SYSTEM
@click.option(
    "--data",
    required=True,
    help="Images: a folder, folder:DIR, synthetic[:N], openmoji[:split], wds:SHARDS, hf:PATH[:split], NAME:ROOT.",
)
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE (e.g. shuffle_buffer=5000), repeatable.")
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--lr", type=POSITIVE_FLOAT, help="Learning rate (default 4.5e-6 x global batch).")
@click.option(
    "--disc-start", default=50001, show_default=True, type=NON_NEGATIVE_INT, help="Step at which the GAN loss starts."
)
@click.option(
    "--reg-weight",
    "--kl-weight",
    "reg_weight",
    default=None,
    type=NON_NEGATIVE_FLOAT,
    help="Weight of the regularizer's loss (default: its loss_weight option, e.g. kl 1e-6).",
)
@click.option(
    "--perceptual-weight", default=1.0, show_default=True, type=NON_NEGATIVE_FLOAT, help="LPIPS weight (0 = no LPIPS)."
)
@click.option(
    "--learn-logvar/--fixed-logvar",
    default=False,
    show_default=True,
    help="Train the reconstruction log-variance (KL VAEs). Fixed at 0 by default: LDM declares it learnable but "
    "leaves it out of its optimizer, and sgm's loss has learn_logvar=False.",
)
@click.option("--lpips-weights", type=click.Path(dir_okay=False), help="Local torchvision VGG16 weights for LPIPS.")
@click.option("--lpips-random", is_flag=True, hidden=True, help="Random LPIPS trunk (tests; no download).")
@engine_options(batch=8, ema=False, ema_decay=0.999, sample_every=1000)
@click.pass_obj
def dvae(
    obj,
    system_dir,
    data,
    data_option,
    strict_data,
    lr,
    disc_start,
    reg_weight,
    perceptual_weight,
    learn_logvar,
    lpips_weights,
    lpips_random,
    **kwargs,
):
    """Stage 1: train the DVAE on images; --save-to-system writes SYSTEM/vae.safetensors at the end."""
    registry = obj["registry"]
    config = train_config(system_dir, "dvae", kwargs, data=data)
    options = data_options(data, strict_data, data_option, registry)
    loss_options = {
        "disc_start": disc_start,
        "reg_weight": reg_weight,
        "perceptual_weight": perceptual_weight,
        "learn_logvar": learn_logvar,
        "lpips_weights": lpips_weights,
        "pnet_rand": lpips_random,
    }
    task = DVAETask(system_dir, data, registry=registry, options=options, lr=lr, loss_options=loss_options)
    _fit(task, config, "vae", system_dir)


@train.command()
@SYSTEM
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Latent cache from d2it encode.")
@click.option("--lr", default=1e-4, show_default=True, type=POSITIVE_FLOAT, help="AdamW learning rate (constant).")
@click.option("--weight-decay", default=0.0, show_default=True, type=NON_NEGATIVE_FLOAT)
@engine_options(batch=32, ema=True, ema_decay=0.9999, sample_every=1000)
@click.pass_obj
def grain(obj, system_dir, cache, lr, weight_decay, **kwargs):
    """Stage 2: train the grain transformer on cached grain maps; --save-to-system writes SYSTEM/grain.safetensors."""
    config = train_config(system_dir, "grain", kwargs, data=str(Path(cache).resolve()))
    hold(cache, "latent cache", shared=True)  # no `encode --overwrite` while we read it
    task = GrainTask(system_dir, cache, registry=obj["registry"], lr=lr, weight_decay=weight_decay)
    _fit(task, config, "grain", system_dir)


@train.command()
@SYSTEM
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Latent cache from d2it encode.")
@click.option("--lr", default=1e-4, show_default=True, type=POSITIVE_FLOAT, help="AdamW learning rate (constant).")
@click.option("--weight-decay", default=0.0, show_default=True, type=NON_NEGATIVE_FLOAT)
@click.option(
    "--grain-source",
    type=click.Choice(GRAIN_SOURCES),
    default="gt",
    show_default=True,
    help="gt: the cached grain maps; random: each region fine with probability --fine-ratio (ablation).",
)
@click.option(
    "--fine-ratio",
    default=0.5,
    show_default=True,
    type=UNIT_INTERVAL,
    help="Fine probability for --grain-source random.",
)
@click.option(
    "--grain-loss",
    type=click.Choice(GRAIN_LOSSES),
    default="grain",
    show_default=True,
    help="grain: the dynamic grain loss (mean per grain, a coarse code counted once); cell: the plain mean "
    "over latent cells (ablation).",
)
@click.option(
    "--sample-steps", default=50, show_default=True, type=POSITIVE_INT, help="Sampling steps of the preview grids."
)
@engine_options(batch=32, ema=True, ema_decay=0.9999, sample_every=5000)
@click.pass_obj
def content(obj, system_dir, cache, lr, weight_decay, grain_source, fine_ratio, grain_loss, sample_steps, **kwargs):
    """Stage 2: train the content transformer by diffusion on cached latents; --save-to-system writes it into SYSTEM."""
    config = train_config(system_dir, "content", kwargs, data=str(Path(cache).resolve()))
    hold(cache, "latent cache", shared=True)
    task = ContentTask(
        system_dir,
        cache,
        registry=obj["registry"],
        lr=lr,
        weight_decay=weight_decay,
        grain_source=grain_source,
        fine_ratio=fine_ratio,
        grain_loss=grain_loss,
        preview_steps=sample_steps,
    )
    _fit(task, config, "content", system_dir)
