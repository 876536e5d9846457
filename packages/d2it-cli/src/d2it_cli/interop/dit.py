"""`d2it import dit`: an official DiT checkpoint (the raw state dict DiT publishes) as a d2it system.

DiT's `models.py` and our `dit-*` backbones share their parameter names, so the weights load
key for key; what the file does not say (the size, patch, classes, learned variance) is read from
the tensor shapes. The system samples as DiT's `sample.py`: linear schedule over 1000 steps,
250 respaced DDPM steps, guidance on the first three ε channels (`guidance.channels = dit`) and,
with the SD VAE, latents scaled by 0.18215.
"""

import re
from pathlib import Path

from d2it import system as systems
from d2it.errors import CheckpointError, ConfigError
from d2it.io import load_into
from d2it.registry import default_registry
from d2it_cli.interop.sd_vae import load_sd_vae_into, read_sd_vae
from d2it_cli.interop.weights import read_state_dict, require
from d2it_cli.outputs import save_system, system_target

# hidden size -> (size name, heads) of DiT's configs (DiT-S/B/L/XL)
DIT_SIZES = {384: ("s", 6), 768: ("b", 12), 1024: ("l", 16), 1152: ("xl", 16)}
VAE_FACTOR = 8  # SD's KL-f8: latents are 1/8 of the image side


def read_dit_checkpoint(path) -> dict:
    """The tensors of a DiT checkpoint: the raw state dict, or the `ema` (else `model`) entry of a training one."""
    return read_state_dict(path, what="a DiT checkpoint", nested=("ema", "model", "state_dict"))


def dit_geometry(tensors: dict, path="checkpoint", num_heads: int | None = None) -> dict:
    """What a DiT state dict's shapes say: backbone name and options, latent size, channels, classes."""
    what = "a DiT checkpoint"
    proj = require(tensors, "x_embedder.proj.weight", path, what)
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    pos = require(tensors, "pos_embed", path, what)
    tokens = int(pos.shape[1])
    grid = round(tokens**0.5)
    if grid * grid != tokens:
        raise CheckpointError(f"{path}: pos_embed has {tokens} tokens, not a square grid")
    depth = len({int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))})
    rows = int(require(tensors, "y_embedder.embedding_table.weight", path, what).shape[0])
    out = int(require(tensors, "final_layer.linear.weight", path, what).shape[0]) // (patch * patch)
    if out not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"{path}: the final layer predicts {out} channels for {in_channels} input channels")
    mlp_hidden = int(require(tensors, "blocks.0.mlp.fc1.weight", path, what).shape[0]) if depth else 4 * hidden
    size, heads = DIT_SIZES.get(hidden, (None, None))
    if num_heads is not None:
        heads = int(num_heads)
    if heads is None:
        raise ConfigError(
            f"{path} has width {hidden}, which is none of DiT's sizes ({', '.join(map(str, DIT_SIZES))}); "
            "give its number of attention heads (--num-heads)"
        )
    if size is None:
        size = min(DIT_SIZES.items(), key=lambda item: abs(item[0] - hidden))[1][0]
    # DiT's LabelEmbedder has a null row only when trained with label dropout
    num_classes, dropout = (rows - 1, 0.1) if rows > 1 else (rows, 0.0)
    options = {
        "depth": depth,
        "hidden_size": hidden,
        "num_heads": heads,
        "patch_size": patch,
        "mlp_ratio": mlp_hidden / hidden,
        "class_dropout": dropout,
        "learn_sigma": out == 2 * in_channels,
    }
    return {
        "backbone": f"dit-{size}/1" if patch == 1 else f"dit-{size}",  # patch 4: patch_size option
        "backbone_options": options,
        "input_size": grid * patch,
        "in_channels": in_channels,
        "num_classes": num_classes,
    }


def import_dit(
    checkpoint, out, *, vae=None, num_heads: int | None = None, overwrite: bool = False, registry=None
) -> systems.System:
    """Write a system directory `out` from an official DiT checkpoint (and optionally the SD VAE).

    checkpoint: DiT's `.pt` state dict (read with `weights_only=True`) or a `.safetensors` file.
    vae: a diffusers `AutoencoderKL` folder, an LDM checkpoint, a Hub name resolved by the caller
        (`resolve_vae`), or None for a latent-only system (image size from the latent size x 8).
    overwrite: replace a system already in `out` (a folder holding anything else is refused).
    Returns the loaded system (on the CPU).
    """
    registry = registry or default_registry()
    system_target(out, overwrite=overwrite)
    tensors = read_dit_checkpoint(checkpoint)
    geometry = dit_geometry(tensors, checkpoint, num_heads)
    if geometry["in_channels"] != 4:
        raise CheckpointError(f"{checkpoint} has {geometry['in_channels']} latent channels; the SD VAE has 4")
    options = {
        "backbone": geometry["backbone_options"],
        "sampler": {"steps": 250},
        "schedule": {"num_timesteps": 1000},
        "guidance": {"channels": "dit"},
    }
    record = systems.SystemRecord(
        backbone=geometry["backbone"],
        vae=None,
        sampler="ddpm",
        schedule="linear",
        image_size=geometry["input_size"] * VAE_FACTOR,
        num_classes=geometry["num_classes"],
        options=options,
    )
    vae_state = None
    if vae is not None:
        vae_state = read_sd_vae(vae)
        options["vae"] = vae_state["options"]
        factor = 2 ** (len(vae_state["options"]["channel_mult"]) - 1)  # 8 for SD's VAE
        changes = {"vae": "vae-f8", "options": options, "latent_scale": vae_state["latent_scale"]}
        record = systems.SystemRecord(**{**record.to_dict(), **changes, "image_size": geometry["input_size"] * factor})
    system = systems.build(record, registry)
    load_into(system.content, tensors, where=str(checkpoint))
    if vae_state is not None:
        load_sd_vae_into(system.vae, vae_state)
    extra = {"imported": {"from": "dit", "checkpoint": Path(checkpoint).name}}
    if vae_state is not None:
        extra["imported"]["vae"] = vae_state["source"]
    save_system(system.eval(), out, overwrite=overwrite, extra=extra)
    return system


def dit_to_diffusers(state: dict) -> dict:
    """DiT's (and `dit-*`'s) names -> diffusers' `DiTTransformer2DModel` (as diffusers' convert_dit_to_diffusers.py).

    diffusers repeats the shared timestep and label embedders in every block and splits the fused
    qkv projection. Its model computes timestep frequencies with `downscale_freq_shift=1` where DiT
    uses 0: set `block.norm1.emb.time_proj.downscale_freq_shift = 0` for DiT's numbers.
    """
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    out = {
        "pos_embed.proj.weight": state["x_embedder.proj.weight"],
        "pos_embed.proj.bias": state["x_embedder.proj.bias"],
        "proj_out_1.weight": state["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": state["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": state["final_layer.linear.weight"],
        "proj_out_2.bias": state["final_layer.linear.bias"],
    }
    for i in range(depth):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}norm1.emb.timestep_embedder.linear_1.{kind}"] = state[f"t_embedder.mlp.0.{kind}"]
            out[f"{d}norm1.emb.timestep_embedder.linear_2.{kind}"] = state[f"t_embedder.mlp.2.{kind}"]
            out[f"{d}norm1.linear.{kind}"] = state[f"{b}adaLN_modulation.1.{kind}"]
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3)
            out[f"{d}attn1.to_q.{kind}"], out[f"{d}attn1.to_k.{kind}"], out[f"{d}attn1.to_v.{kind}"] = q, k, v
            out[f"{d}attn1.to_out.0.{kind}"] = state[f"{b}attn.proj.{kind}"]
            out[f"{d}ff.net.0.proj.{kind}"] = state[f"{b}mlp.fc1.{kind}"]
            out[f"{d}ff.net.2.{kind}"] = state[f"{b}mlp.fc2.{kind}"]
        out[f"{d}norm1.emb.class_embedder.embedding_table.weight"] = state["y_embedder.embedding_table.weight"]
    return out
