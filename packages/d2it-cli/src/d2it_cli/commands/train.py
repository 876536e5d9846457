"""`d2it train dvae|grain|content`: the trainers of both stages on one engine (single process or torchrun + DDP)."""

import json
from pathlib import Path

import click

from d2it import system as systems
from d2it.errors import ConfigError
from d2it_cli.commands.params import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, UNIT_INTERVAL
from d2it_cli.commands.system_dir import WRITABLE_SYSTEM_DIR
from d2it_cli.data import data_options, open_dataset
from d2it_cli.engine import Trainer, dist
from d2it_cli.engine.loop import seed_everything
from d2it_cli.engine.parts import engine_options, load_vae, train_config
from d2it_cli.engine.stage1 import DVAETask, preview_batch
from d2it_cli.engine.stage2 import GRAIN_SOURCES, ContentTask, GrainTask, open_cache
from d2it_cli.locks import hold

SYSTEM = click.option(
    "--system",
    "system_dir",
    required=True,
    type=WRITABLE_SYSTEM_DIR,
    help="Model directory (from d2it build); the trained part is written back into it.",
)


def _report(history, trainer, part: str, system_dir):
    """One summary line on rank 0."""
    if not dist.is_main():
        return
    last = history[-1] if history else {}
    losses = {
        k: round(v, 6)
        for k, v in last.items()
        if k not in ("step", "epoch", "time", "lr_factor") and isinstance(v, float)
    }
    click.echo(f"trained {part} for {trainer.step} steps; last log {json.dumps(losses)}")
    click.echo(f"wrote {system_dir}/{part}.safetensors; run directory {trainer.run_dir}")


@click.group()
def train():
    """Train a part of a system: the DVAE (stage 1), then the grain and content transformers (stage 2)."""


@train.command()
@SYSTEM
@click.option(
    "--data", required=True, help="Images: a folder, folder:DIR, synthetic[:N], wds:SHARDS, hf:PATH[:split], NAME:ROOT."
)
@click.option("--data-option", multiple=True, help="Dataset option KEY=VALUE (e.g. shuffle_buffer=5000), repeatable.")
@click.option("--strict-data", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--lr", type=POSITIVE_FLOAT, help="Learning rate (default 4.5e-6 x global batch).")
@click.option("--disc-start", default=50001, show_default=True, type=NON_NEGATIVE_INT,
              help="Step at which the GAN loss starts.")
@click.option("--reg-weight", "--kl-weight", "reg_weight", default=None, type=NON_NEGATIVE_FLOAT,
              help="Weight of the regularizer's loss (default: its loss_weight option, e.g. kl 1e-6).")
@click.option("--perceptual-weight", default=1.0, show_default=True, type=NON_NEGATIVE_FLOAT,
              help="LPIPS weight (0 = no LPIPS).")
@click.option("--learn-logvar/--fixed-logvar", default=True, show_default=True,
              help="Train the reconstruction log-variance (KL VAEs). LDM declares it learnable but leaves it out of "
                   "its optimizer, so --fixed-logvar (0) is what LDM's released training did.")
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
    """Stage 1: train the DVAE on images; writes SYSTEM/vae.safetensors at the end."""
    registry = obj["registry"]
    config = train_config(system_dir, "dvae", kwargs, data=data)
    seed_everything(config.seed)  # before any module (e.g. the discriminator) is built
    record, vae = load_vae(system_dir, registry)
    if not record.thresholds and vae.grains > 1 and dist.is_main():
        click.echo(
            f"warning: {system_dir} has no entropy thresholds; using the VAE's defaults {vae.thresholds} "
            "(run d2it thresholds first)",
            err=True,
        )
    options = data_options(data, strict_data, data_option, registry)
    dataset = open_dataset(data, record.image_size, train=True, options=options, registry=registry)
    preview = preview_batch(open_dataset(data, record.image_size, train=False, options=options, registry=registry))
    loss_options = {
        "disc_start": disc_start,
        "reg_weight": reg_weight,
        "perceptual_weight": perceptual_weight,
        "learn_logvar": learn_logvar,
        "lpips_weights": lpips_weights,
        "pnet_rand": lpips_random,
    }
    task = DVAETask(vae, dataset, system_dir, preview=preview, lr=lr, loss_options=loss_options)
    trainer = Trainer(task, config)
    history = trainer.fit()
    _report(history, trainer, "vae", system_dir)


def _stage2_system(system_dir, registry, part):
    record, _ = systems.read_record(system_dir)
    if not record.vae:
        raise ConfigError(f"the system in {system_dir} has no VAE, so there are no latents to train on")
    return systems.load(system_dir, registry, parts=["vae", part])


@train.command()
@SYSTEM
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Latent cache from d2it encode.")
@click.option("--lr", default=1e-4, show_default=True, type=POSITIVE_FLOAT, help="AdamW learning rate (constant).")
@click.option("--weight-decay", default=0.0, show_default=True, type=NON_NEGATIVE_FLOAT)
@engine_options(batch=32, ema=True, ema_decay=0.9999, sample_every=1000)
@click.pass_obj
def grain(obj, system_dir, cache, lr, weight_decay, **kwargs):
    """Stage 2: train the grain transformer on cached grain maps; writes SYSTEM/grain.safetensors."""
    config = train_config(system_dir, "grain", kwargs, data=str(Path(cache).resolve()))
    seed_everything(config.seed)  # before any module (e.g. the discriminator) is built
    system = _stage2_system(system_dir, obj["registry"], "grain")
    hold(cache, "latent cache", shared=True)  # no `encode --overwrite` while we read it
    task = GrainTask(system, open_cache(cache, system, system_dir), system_dir, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(task, config)
    _report(trainer.fit(), trainer, "grain", system_dir)


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
    "--fine-ratio", default=0.5, show_default=True, type=UNIT_INTERVAL,
        help="Fine probability for --grain-source random."
)
@click.option("--sample-steps", default=50, show_default=True, type=POSITIVE_INT,
              help="Sampling steps of the preview grids.")
@engine_options(batch=32, ema=True, ema_decay=0.9999, sample_every=5000)
@click.pass_obj
def content(obj, system_dir, cache, lr, weight_decay, grain_source, fine_ratio, sample_steps, **kwargs):
    """Stage 2: train the content transformer by diffusion on cached latents; writes SYSTEM/content.safetensors."""
    if not 0.0 <= fine_ratio <= 1.0:
        raise ConfigError(f"--fine-ratio must lie in [0, 1], got {fine_ratio}")
    config = train_config(system_dir, "content", kwargs, data=str(Path(cache).resolve()))
    seed_everything(config.seed)  # before any module (e.g. the discriminator) is built
    system = _stage2_system(system_dir, obj["registry"], "content")
    hold(cache, "latent cache", shared=True)
    task = ContentTask(
        system,
        open_cache(cache, system, system_dir),
        system_dir,
        lr=lr,
        weight_decay=weight_decay,
        grain_source=grain_source,
        fine_ratio=fine_ratio,
        sample_steps=sample_steps,
    )
    trainer = Trainer(task, config)
    _report(trainer.fit(), trainer, "content", system_dir)
