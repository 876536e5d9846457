"""Loading and saving single parts of a model directory (a trainer's VAE, a trained part written back)."""

from pathlib import Path

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import load_into, load_safetensors, save_safetensors
from d2it.registry import Registry, default_registry


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
