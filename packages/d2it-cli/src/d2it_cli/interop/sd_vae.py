"""`d2it import sd-vae`: Stable Diffusion's KL-f8 autoencoder (diffusers folder or LDM checkpoint) as `vae-f8`.

`vae-f8` is LDM's `AutoencoderKL` with our module names: the encoder's mid block and head sit in
its (single) tap, and the decoder's levels are stored in the order they run. The two published
formats map onto it exactly:

- diffusers `AutoencoderKL`: a folder with `config.json` and `diffusion_pytorch_model.safetensors`
  (or `.bin`, read with `weights_only=True`); the latent scale is its `scaling_factor`.
- LDM / CompVis: a `.ckpt` / `.pt` / `.safetensors` state dict (a whole Stable Diffusion checkpoint
  works too: its `first_stage_model.` part is used); LDM files carry no scale, so 0.18215 (SD's).
"""

import json
import re
from pathlib import Path

import torch

from d2it import checks
from d2it import system as systems
from d2it.errors import CheckpointError, ConfigError
from d2it.io import load_into, load_safetensors
from d2it.registry import default_registry
from d2it_cli.interop.weights import read_state_dict, require
from d2it_cli.outputs import save_system, system_target

SD_LATENT_SCALE = 0.18215
# the names `--vae` accepts for the VAEs DiT was evaluated with -> their Hub repositories
SD_VAE_HUB = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse"}
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# -- diffusers names -> LDM names ----------------------------------------------------------------
def _diffusers_to_ldm(tensors: dict) -> dict:
    """Rename a diffusers `AutoencoderKL` state dict to LDM's names (attention projections as 1x1 convs)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
            "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}  # fmt: skip
    for key, value in tensors.items():
        new = key
        new = re.sub(r"^(encoder)\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.down.\2.block.\3.", new)
        new = re.sub(r"^(encoder)\.down_blocks\.(\d+)\.downsamplers\.0\.", r"\1.down.\2.downsample.", new)
        new = re.sub(r"^(decoder)\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.upd.\2.block.\3.", new)
        new = re.sub(r"^(decoder)\.up_blocks\.(\d+)\.upsamplers\.0\.", r"\1.upd.\2.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        m = re.match(r"^(.*)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new)
        if m:
            new = f"{m.group(1)}.mid.attn_1.{attn.get(m.group(2), m.group(2))}.{m.group(3)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        out[new] = value
    # diffusers lists decoder levels in the order they run; LDM indexes them by resolution
    levels = 1 + max((int(m.group(1)) for k in out if (m := re.match(r"decoder\.upd\.(\d+)\.", k))), default=-1)
    renamed = {}
    for key, value in out.items():
        m = re.match(r"decoder\.upd\.(\d+)\.(.*)$", key)
        renamed[f"decoder.up.{levels - 1 - int(m.group(1))}.{m.group(2)}" if m else key] = value
    return renamed


# -- LDM names -> vae-f8 names ---------------------------------------------------------------------
def _ldm_levels(tensors: dict, part: str, level_key: str) -> int:
    pattern = re.compile(rf"{part}\.{level_key}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in tensors if (m := pattern.match(k))), default=-1)


def _ldm_to_d2it(tensors: dict) -> dict:
    """Rename an LDM `AutoencoderKL` state dict (encoder/decoder/quant convs) to `vae-f8`'s names."""
    n_up = _ldm_levels(tensors, "decoder", "up")
    out = {}
    for key, value in tensors.items():
        if not key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            continue  # the training loss (LPIPS, discriminator) and EMA copies are not part of the model
        new = key
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.downsample.\1.", new)
        new = re.sub(r"^encoder\.(mid|norm_out|conv_out)\.", r"encoder.heads.0.\1.", new)
        m = re.match(r"^decoder\.up\.(\d+)\.(.*)$", new)
        if m:
            i, rest = n_up - 1 - int(m.group(1)), m.group(2)
            if rest.startswith("upsample."):
                new = f"decoder.upsample.{i}.{rest[len('upsample.') :]}"
            else:
                new = f"decoder.up.{i}.{rest}"
        out[new] = value
    return out


def _width(tensors: dict, level: str, path) -> int:
    return int(require(tensors, f"{level}.block.0.conv2.weight", path, "an LDM / SD autoencoder").shape[0])


def _ldm_options(tensors: dict, path) -> dict:
    """`vae-f8` options from an LDM state dict's shapes."""
    what = "an LDM / SD autoencoder"
    base = int(require(tensors, "encoder.conv_in.weight", path, what).shape[0])
    levels = _ldm_levels(tensors, "encoder", "down")
    widths = [_width(tensors, f"encoder.down.{i}", path) for i in range(levels)]
    blocks = len({int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    n_up = _ldm_levels(tensors, "decoder", "up")
    dec_widths = [_width(tensors, f"decoder.up.{i}", path) for i in range(n_up)]
    z = int(require(tensors, "decoder.conv_in.weight", path, what).shape[1])
    moments = int(require(tensors, "encoder.conv_out.weight", path, what).shape[0])
    if moments != 2 * z:
        raise CheckpointError(f"{path}: the encoder gives {moments} channels for a {z}-channel latent (not a KL VAE)")
    has_quant = "quant_conv.weight" in tensors
    if has_quant and tuple(tensors["quant_conv.weight"].shape[:2]) != (2 * z, 2 * z):
        raise CheckpointError(f"{path}: quant_conv changes the latent width (embed_dim != z_channels); not supported")

    def attn_levels(part, key, n):
        with_attn = [i for i in range(n) if any(k.startswith(f"{part}.{key}.{i}.attn.") for k in tensors)]
        if with_attn != list(range(n - len(with_attn), n)):
            raise CheckpointError(f"{path}: {part} attention on levels {with_attn} is not on the lowest resolutions")
        return len(with_attn)

    return {
        "base_width": base,
        "channel_mult": tuple(w // base for w in widths),
        "num_res_blocks": blocks,
        "attn_levels": attn_levels("encoder", "down", levels),
        "mid_attn": any(k.startswith("encoder.mid.attn_1.") for k in tensors),
        "decoder_mult": tuple(w // base for w in dec_widths),
        "decoder_attn_levels": attn_levels("decoder", "up", n_up),
        "latent_channels": z,
        "norm_groups": 32,
        "quant_conv": has_quant,
    }


def _diffusers_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # JSON and UTF-8
        raise CheckpointError(f"{path} cannot be read as a diffusers config ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a diffusers config (a JSON {type(config).__name__}, not an object)")
    try:  # the entries read below, each of the type and range diffusers gives it
        checks.field(config, "_class_name", str(path), types=(str,), optional=True)
        checks.field(config, "scaling_factor", str(path), low=0, optional=True)
        if config.get("scaling_factor") is not None and not config["scaling_factor"] > 0:
            raise ConfigError(
                f"{path} entry 'scaling_factor' must be a finite number > 0, got {config['scaling_factor']}"
            )
        checks.field(config, "norm_num_groups", str(path), low=1, integer=True, optional=True)
        checks.field(config, "shift_factor", str(path), types=(int, float), optional=True)
    except ConfigError as exc:
        raise CheckpointError(f"malformed diffusers config: {exc}") from None
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise CheckpointError(f"{folder} holds a diffusers {config['_class_name']}, not an AutoencoderKL")
    if config.get("shift_factor") not in (None, 0, 0.0):
        raise CheckpointError(f"{folder}: a latent shift_factor ({config['shift_factor']}) is not supported")
    return config


def read_sd_vae(source) -> dict:
    """Read an SD-style KL-f8 VAE: dict(tensors (vae-f8 names), options, latent_scale, source)."""
    path = Path(source)
    if path.is_dir():
        config = _diffusers_config(path)
        weights = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} has config.json but no {' or '.join(DIFFUSERS_WEIGHTS)}")
        ldm = _diffusers_to_ldm(read_state_dict(weights, what="diffusers AutoencoderKL weights"))
        scale = float(config.get("scaling_factor") or SD_LATENT_SCALE)
        if config.get("norm_num_groups") not in (None, 32):
            raise CheckpointError(f"{path}: norm_num_groups {config['norm_num_groups']} is not supported (LDM uses 32)")
    elif path.is_file():
        state = read_state_dict(path, what="an LDM / SD autoencoder checkpoint")
        prefix = "first_stage_model."
        if any(k.startswith(prefix) for k in state):  # a whole Stable Diffusion checkpoint
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        ldm, scale = state, SD_LATENT_SCALE
    else:
        raise CheckpointError(f"VAE {source} is neither a diffusers folder nor a checkpoint file")
    options = _ldm_options(ldm, path)
    return {"tensors": _ldm_to_d2it(ldm), "options": options, "latent_scale": scale, "source": path.name}


def load_sd_vae_into(vae, state: dict):
    """Load `read_sd_vae`'s tensors into a built `vae-f8` (strictly, names checked)."""
    load_into(vae, state["tensors"], where=f"VAE {state['source']}")


def check_import_target(out, record: systems.SystemRecord | None) -> bool:
    """Before any reading or download: may the VAE go into `out` with `record`? True when `out` holds a system.

    A new system needs its stage-2 parts named (`record`), since they are written randomly initialised
    (DiT-XL/2 alone is 2.7 GB); an existing one keeps its parts, so `record` must then be None.
    """
    out = system_target(out, update=True)
    existing = (out / systems.RECORD_FILE).is_file()
    if existing and record is not None:
        raise ConfigError(
            f"{out} already holds a system, whose other parts are kept; --backbone, --image-size, --num-classes "
            "and --set describe a new system only"
        )
    if not existing and record is None:
        raise ConfigError(
            f"{out} holds no system: to write a new one name its stage-2 parts (e.g. --backbone dit-s --image-size "
            "256 --num-classes 1000), which are written randomly initialised, or import the VAE into a system "
            "directory that `d2it build` or `d2it import dit` wrote"
        )
    return existing


def import_sd_vae(
    source, out, *, record: systems.SystemRecord | None = None, latent_scale: float | None = None, registry=None
) -> systems.System:
    """Fill the `vae-f8` of the system directory `out` from `source`; returns the saved system.

    When `out` already holds a system its VAE slot becomes `vae-f8` with these weights (the other
    parts are kept, and `record` must be None); otherwise a new system is written from `record`
    (its stage-2 parts randomly initialised: required, so nothing large is written unasked), the VAE
    slot replaced the same way. The record's latent scale becomes the VAE's (`scaling_factor`,
    0.18215 for LDM files) unless `latent_scale` is given.
    """
    registry = registry or default_registry()
    existing = check_import_target(out, record)
    out = Path(out)
    state = read_sd_vae(source)
    scale = state["latent_scale"] if latent_scale is None else float(latent_scale)
    if existing:
        record, doc = systems.read_record(out)
        extra = doc.get("extra", {})
    else:
        extra = {}
    if record.image_size % 8:
        raise ConfigError(f"image size {record.image_size} is not a multiple of the VAE's factor 8")
    options = {**record.options, "vae": state["options"]}
    record = systems.SystemRecord(**{**record.to_dict(), "vae": "vae-f8", "options": options, "latent_scale": scale})
    torch.manual_seed(0)
    system = systems.build(record, registry)
    if existing:
        for stem, module in system.weight_modules().items():
            path = out / f"{stem}.safetensors"
            if stem != "vae" and path.is_file():
                tensors, _ = load_safetensors(path)
                load_into(module, tensors, where=str(path))
    load_sd_vae_into(system.vae, state)
    extra = {**extra, "imported_vae": {"from": "sd-vae", "source": state["source"]}}
    save_system(system.eval(), out, update=True, extra=extra)
    return system
