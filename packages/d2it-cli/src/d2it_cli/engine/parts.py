"""Loading and saving single parts of a model directory, and the click options every trainer shares."""

from pathlib import Path

import click

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import load_into, load_safetensors, save_safetensors
from d2it.registry import Registry, default_registry
from d2it_cli.engine.feed import default_workers
from d2it_cli.engine.loop import NAN_POLICIES, PRECISIONS, TrainConfig


def load_vae(directory, registry: Registry | None = None, device="cpu"):
    """(record, VAE) of a model directory: only the VAE is built, its weights loaded and thresholds applied."""
    registry = registry or default_registry()
    record, _ = systems.read_record(directory)
    if not record.vae:
        raise ConfigError(f"the system in {directory} has no VAE")
    record = record.canonical(registry)
    vae = systems.build_vae(record, registry)
    tensors, _ = load_safetensors(Path(directory) / "vae.safetensors")
    load_into(vae, tensors, where=f"{Path(directory) / 'vae'}.safetensors")
    if record.thresholds and hasattr(vae, "set_thresholds"):
        vae.set_thresholds(list(record.thresholds))
    return record, vae.to(device)


def save_part(directory, part: str, state: dict):
    """Write one trained part back to DIR/<part>.safetensors (atomically, metadata as `d2it.system.save`)."""
    meta = {"d2it.part": part, "d2it.format": str(systems.FORMAT)}
    save_safetensors(state, Path(directory) / f"{part}.safetensors", meta)


def engine_options(*, batch: int, ema: bool, ema_decay: float, sample_every: int, warmup: str = "0"):
    """Decorator adding the shared training options (with per-trainer defaults) to a click command."""

    # imported here: the option types live with the commands, which import this module
    from d2it_cli.commands.params import DEVICE, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, UNIT_INTERVAL

    def decorate(fn):
        options = [
            click.option(
                "--batch", default=batch, show_default=True, type=POSITIVE_INT,
                help="Images per process per micro-batch."
            ),
            click.option(
                "--grad-accum", default=1, show_default=True, type=POSITIVE_INT,
                help="Micro-batches per optimizer step."
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
            click.option("--log-every", default=50, show_default=True, type=POSITIVE_INT,
                         help="Steps between log lines."),
            click.option(
                "--sample-every",
                default=sample_every,
                show_default=True,
                type=NON_NEGATIVE_INT,
                help="Steps between preview grids (0 = never).",
            ),
            click.option("--ckpt-every", default=1000, show_default=True, type=NON_NEGATIVE_INT,
                         help="Steps between checkpoints."),
            click.option("--keep", type=POSITIVE_INT, help="Keep only the newest N checkpoints."),
            click.option("--ema/--no-ema", default=ema, show_default=True, help="Keep an EMA of the weights."),
            click.option("--ema-decay", default=ema_decay, show_default=True, type=UNIT_INTERVAL),
            click.option("--max-grad-norm", type=POSITIVE_FLOAT, help="Clip gradients to this norm."),
            click.option("--seed", default=0, show_default=True, type=SEED),
            click.option(
                "--run-dir",
                type=click.Path(file_okay=False),
                help="Logs, checkpoints, previews (default SYSTEM/runs/<trainer>).",
            ),
            click.option(
                "--device", type=DEVICE,
                help="cpu, cuda, cuda:1 ... (default: CUDA when available; torchrun: the local GPU)."
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
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


ENGINE_KEYS = (
    "batch",
    "grad_accum",
    "steps",
    "epochs",
    "warmup",
    "resume",
    "precision",
    "workers",
    "log_every",
    "sample_every",
    "ckpt_every",
    "keep",
    "ema",
    "ema_decay",
    "max_grad_norm",
    "seed",
    "quiet",
    "device",
    "compile",
    "grad_checkpointing",
    "tf32",
    "channels_last",
    "report_to",
    "nan_policy",
)


def train_config(system_dir, trainer: str, kwargs: dict, data: str | None = None) -> TrainConfig:
    """A validated TrainConfig from the shared options (popped from `kwargs`); run directory SYSTEM/runs/<trainer>.

    `data` names what the run trains on (the --data value or the cache folder); resuming with other data is refused.
    """
    run_dir = kwargs.pop("run_dir", None) or Path(system_dir) / "runs" / trainer
    values = {k: kwargs.pop(k) for k in ENGINE_KEYS if k in kwargs}
    if values.get("steps") is not None:
        values["epochs"] = None
    if values["workers"] is None:
        values["workers"] = default_workers()
    config = TrainConfig(run_dir=run_dir, data_source=data, **values)
    config.validate()  # before anything is loaded or built
    return config
