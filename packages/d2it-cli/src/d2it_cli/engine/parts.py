"""Loading and saving single parts of a model directory, and the engine settings every trainer shares."""

from pathlib import Path

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import load_into, load_safetensors, save_safetensors
from d2it.registry import Registry, default_registry
from d2it_cli.engine.feed import default_workers
from d2it_cli.engine.loop import TrainConfig


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


# the TrainConfig fields every `d2it train` command takes as options
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
