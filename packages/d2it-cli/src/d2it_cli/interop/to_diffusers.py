"""`d2it export --format diffusers`: a system as a folder that `diffusers.DiffusionPipeline.from_pretrained` loads.

Two forms, picked by what the system is (`pipeline="auto"`):

- **`DiTPipeline`** — a plain `dit-*` backbone with the `vae-f8` VAE, as `d2it import dit` makes: the
  folders `transformer/` (`DiTTransformer2DModel`), `vae/` (`AutoencoderKL`), `scheduler/` and
  `model_index.json`, written by hand (diffusers is not needed to export). diffusers' own code decides
  what can agree: its `DiTPipeline` hard-codes the null class 1000 (the class table is written with
  1001 rows, the system's null row at 1000), drops a learned variance before the scheduler step,
  divides the latents by the VAE's `scaling_factor` (the system's latent scale) and guides all latent
  channels; its transformer embeds timesteps with frequencies exp(-ln(1e4) i / (half - 1)) where
  DiT (and d2it) divide by `half`, which nothing in its config can change. The scheduler is the
  diffusers counterpart of the system's sampler (`scheduler_for`).
- **A d2it custom pipeline** — every other system (D²iT: DVAE, grain transformer, routed backbone,
  RefineNet), for which diffusers has no classes: `system/` holds the d2it system (d2it.json, weights and
  `d2it_system.py`, which names the class diffusers loads it with: `d2it.System`), and
  `pipeline_d2it.py` is the pipeline class (`model_index.json` names both). diffusers runs that code
  only with `trust_remote_code=True`, and it needs d2it installed; it calls `d2it_sampling.Pipeline`,
  so its images are `d2it sample`'s, pixel for pixel.

Both forms carry `d2it_export.json`: the system record, the versions, the sampler and how the export
agrees with d2it (`d2it push` writes the model card from it).
"""

import importlib.metadata as md
import importlib.resources
import json
import re
import shutil
from pathlib import Path

import torch

from d2it import system as systems
from d2it.errors import ConfigError
from d2it.io import atomic_path, atomic_write_text, save_safetensors, staged_writes
from d2it.registry import default_registry
from d2it_cli import outputs
from d2it_cli.interop.dit import dit_to_diffusers
from d2it_sampling.images import resolve_sampler

PIPELINES = ("auto", "dit", "d2it")
EXPORT_RECORD = "d2it_export.json"
MODEL_INDEX = "model_index.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
PIPELINE_MODULE, PIPELINE_CLASS = "pipeline_d2it", "D2itPipeline"
SYSTEM_FOLDER, SYSTEM_MODULE = systems.DIFFUSERS_SYSTEM, "d2it_system"
DIT_NULL_CLASS = 1000  # DiTPipeline's `class_null = torch.tensor([1000] * batch_size)`
EXPORT_EXISTS = "{folder} already holds an export; pass --overwrite to replace it"
KIND = "diffusers export"
SCHEDULED = ("ddpm", "ddim", "euler", "heun", "dpmpp-2m", "dpmpp-2m-sde")  # d2it samplers with a diffusers scheduler

SYSTEM_MODULE_SOURCE = '''"""The d2it system of this diffusers pipeline: d2it.json and its weights, beside this file.

diffusers loads it with `d2it.System.from_pretrained(this folder)`; d2it must be installed
(`pip install d2it-cli`).
"""

from d2it.system import System

__all__ = ["System"]
'''


def diffusers_version() -> str:
    """The installed diffusers' version for the configs' `_diffusers_version` (a recent one when not installed)."""
    try:
        return md.version("diffusers")
    except md.PackageNotFoundError:
        return "0.30.0"


# -- which form ---------------------------------------------------------------------------------
def dit_pipeline_problems(system) -> list[str]:
    """Why diffusers' `DiTPipeline` cannot hold this system (empty: it can)."""
    record, content = system.record, system.content
    problems = []
    if record.refine or record.grain or system.routed:
        problems.append("it is a D²iT system (grain transformer / routed backbone), which diffusers has no classes for")
    if record.vae != "vae-f8":
        problems.append(f"its VAE is {record.vae or 'none'}, and DiTPipeline decodes with an AutoencoderKL (vae-f8)")
    if type(content).__name__ != "DiT" or not hasattr(content, "blocks"):
        problems.append(f"its backbone {record.backbone} is not a plain DiT")
        return problems
    hidden = content.pos_embed.shape[-1]
    mlp = content.blocks[0].mlp.fc1.out_features if len(content.blocks) else 4 * hidden
    if mlp != 4 * hidden:
        problems.append(f"its MLP ratio is {mlp / hidden:g}; diffusers' DiT has 4")
    if record.num_classes > DIT_NULL_CLASS:
        problems.append(f"it has {record.num_classes} classes; DiTPipeline's null class is always {DIT_NULL_CLASS}")
    vae = record.options.get("vae", {})
    if vae and (vae.get("attn_levels") or vae.get("decoder_attn_levels")):
        problems.append("its VAE has attention inside its levels, which AutoencoderKL has only in the middle")
    if vae and list(vae.get("decoder_mult", [])) != list(vae.get("channel_mult", [])):
        problems.append("its VAE decoder's widths differ from the encoder's, which AutoencoderKL cannot express")
    if vae and vae.get("regularizer", "kl") != "kl":
        problems.append(f"its VAE regularizer is {vae.get('regularizer')}, and AutoencoderKL is a KL autoencoder")
    return problems


# -- DiT transformer -----------------------------------------------------------------------------
def dit_transformer(system) -> tuple[dict, dict]:
    """(config, tensors) of diffusers' `DiTTransformer2DModel` holding the system's `dit-*` backbone.

    The class table gets DiTPipeline's 1001 rows: the system's classes first, then its null row
    (guidance's unconditional embedding) at 1000 and in the unused rows between; a backbone without a
    null row (class_dropout 0, not guidable) gets zeros there.
    """
    content, record = system.content, system.record
    state = {k: v.detach().cpu() for k, v in content.state_dict().items()}
    tensors = dit_to_diffusers(state)  # diffusers computes the sin-cos position table itself (the same numbers)
    table = state["y_embedder.embedding_table.weight"]
    classes, hidden = record.num_classes, table.shape[1]
    rows = torch.zeros(DIT_NULL_CLASS + 1, hidden, dtype=table.dtype)
    rows[:classes] = table[:classes]
    if getattr(content, "null_class", None) is not None:
        rows[classes:] = table[content.null_class]
    for key in [k for k in tensors if k.endswith("class_embedder.embedding_table.weight")]:
        tensors[key] = rows
    heads = int(content.num_heads)
    config = {
        "_class_name": "DiTTransformer2DModel",
        "_diffusers_version": diffusers_version(),
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": int(content.in_channels),
        "out_channels": int(content.out_channels),
        "num_layers": len(content.blocks),
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": int(content.input_size),
        "patch_size": int(content.patch_size),
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": DIT_NULL_CLASS,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }
    return config, tensors


# -- vae-f8 -> AutoencoderKL ----------------------------------------------------------------------------
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _diffusers_vae_name(key: str) -> str:
    """A `vae-f8` parameter name -> diffusers' `AutoencoderKL` name (the inverse of `d2it import sd-vae`'s map)."""
    new = key
    new = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", new)
    new = re.sub(r"^encoder\.downsample\.(\d+)\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
    new = re.sub(r"^encoder\.heads\.0\.", "encoder.", new)
    new = re.sub(r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2.", new)
    new = re.sub(r"^decoder\.upsample\.(\d+)\.", r"decoder.up_blocks.\1.upsamplers.0.", new)
    new = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", new)
    m = re.match(r"^(.*)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", new)
    if m:
        new = f"{m.group(1)}.mid_block.attentions.0.{_ATTN[m.group(2)]}.{m.group(3)}"
    new = new.replace(".nin_shortcut.", ".conv_shortcut.")
    return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", new)


def vae_f8_autoencoder(system) -> tuple[dict, dict]:
    """(config, tensors) of diffusers' `AutoencoderKL` holding the `vae-f8` (latent scale as `scaling_factor`)."""
    options = system.record.options["vae"]
    tensors = {}
    for key, value in system.vae.state_dict().items():
        name = _diffusers_vae_name(key)
        if ".mid_block.attentions.0.to_" in name and name.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # LDM's 1x1 convolutions are diffusers' linear projections
        tensors[name] = value.detach().cpu()
    levels = len(options["channel_mult"])
    config = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers_version(),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(options["base_width"]) * int(m) for m in options["channel_mult"]],
        "layers_per_block": int(options["num_res_blocks"]),
        "act_fn": "silu",
        "latent_channels": int(options["latent_channels"]),
        "norm_num_groups": int(options["norm_groups"]),
        "sample_size": int(system.record.image_size),
        "scaling_factor": float(system.record.latent_scale),
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": bool(options.get("quant_conv", True)),
        "use_post_quant_conv": bool(options.get("quant_conv", True)),
        "mid_block_add_attention": bool(options.get("mid_attn", True)),
    }
    return config, tensors


# -- scheduler ------------------------------------------------------------------------------------------
def _betas_config(record, registry) -> dict:
    """The schedule as diffusers names it: linear / squaredcos_cap_v2 where they are the same betas, else the list."""
    options = record.options.get("schedule", {})
    total = int(options.get("num_timesteps", 1000))
    out = {"num_train_timesteps": total, "trained_betas": None}
    if record.schedule == "linear":
        scale = 1000.0 / total if options.get("rescale", True) else 1.0
        start, end = scale * float(options.get("beta_start", 1e-4)), scale * float(options.get("beta_end", 0.02))
        return {**out, "beta_schedule": "linear", "beta_start": start, "beta_end": end}
    if record.schedule == "cosine" and options.get("s", 0.008) == 0.008 and options.get("max_beta", 0.999) == 0.999:
        return {**out, "beta_schedule": "squaredcos_cap_v2"}
    betas = registry.create("schedule", record.schedule, options, where="schedule")
    return {**out, "num_train_timesteps": len(betas), "beta_schedule": "linear", "trained_betas": betas.tolist()}


def scheduler_for(record, sampler: str, options: dict, *, learn_sigma: bool, registry=None) -> tuple[dict, list[str]]:
    """(scheduler config, notes): the diffusers scheduler nearest to d2it's `sampler` with `options`.

    The notes say where they differ (in the export record and the model card).
    """
    registry = registry or default_registry()
    if sampler not in SCHEDULED:
        raise ConfigError(
            f"sampler {sampler!r} has no diffusers scheduler to export; pass --sampler with one of "
            + ", ".join(SCHEDULED)
            + ", or --pipeline d2it (a custom pipeline that runs any d2it sampler)"
        )
    sampler_config = registry.create("sampler", sampler, dict(options), where="sampler").config
    spacing = str(options.get("spacing") or getattr(sampler_config, "spacing", "uniform"))
    spacing = spacing.split(":")[0]
    common = {
        "_diffusers_version": diffusers_version(),
        **_betas_config(record, registry),
        "prediction_type": "epsilon",
    }
    clip = bool(options.get("clip_denoised", False))
    notes = []
    spaced = {"uniform": "linspace", "trailing": "trailing"}
    if sampler == "ddpm":
        variance = "fixed_small" if learn_sigma else "fixed_large"
        if learn_sigma:
            notes.append(
                "DiTPipeline drops the learned variance before DDPMScheduler.step, so DDPM steps use the posterior "
                "variance (fixed_small) where d2it uses the learned one"
            )
        notes.append("DiTPipeline draws DDPM's per-step noise from torch's global generator, not from `generator`")
        config = {"_class_name": "DDPMScheduler", **common, "variance_type": variance, "clip_sample": clip,
                  "timestep_spacing": spaced.get(spacing, "linspace")}  # fmt: skip
    elif sampler == "ddim":
        if spacing == "uniform":
            notes.append(
                "DDIMScheduler steps from t to t - T/N, so d2it's uniform spacing (DiT's respacing, which includes "
                "step T-1) is written as `leading`: the same as d2it's `--steps ddimN` for N dividing T; d2it's "
                "`trailing` spacing is exact for N dividing T"
            )
        if float(options.get("eta", 0.0)):
            notes.append("DiTPipeline runs DDIM with eta 0; the system's eta is not carried over")
        ddim_spacing = "trailing" if spacing == "trailing" else "leading"
        config = {"_class_name": "DDIMScheduler", **common, "clip_sample": clip, "set_alpha_to_one": True,
                  "steps_offset": 0, "timestep_spacing": ddim_spacing}  # fmt: skip
    else:  # euler, heun, dpmpp-2m, dpmpp-2m-sde
        notes.append(
            f"diffusers' {sampler} interpolates σ between the schedule's steps; d2it rounds every σ to the "
            "1000-step grid, so the steps are close, not equal"
        )
        sigmas = {"use_karras_sigmas": spacing == "karras"}
        config = {**common, "timestep_spacing": "trailing" if spacing == "trailing" else "linspace", **sigmas}
        if sampler == "euler":
            config = {"_class_name": "EulerDiscreteScheduler", **config}
        elif sampler == "heun":
            config = {"_class_name": "HeunDiscreteScheduler", **config}
        else:
            sde = sampler == "dpmpp-2m-sde"
            config = {"_class_name": "DPMSolverMultistepScheduler", **config, "solver_order": 2,
                      "algorithm_type": "sde-dpmsolver++" if sde else "dpmsolver++", "lower_order_final": True,
                      "final_sigmas_type": "zero", "use_lu_lambdas": spacing == "log-snr"}  # fmt: skip
    if spacing not in ("uniform", "trailing", "karras", "log-snr") or (
        spacing in ("karras", "log-snr") and config["_class_name"] in ("DDPMScheduler", "DDIMScheduler")
    ):
        notes.append(f"the `{spacing}` spacing has no counterpart in {config['_class_name']}; its default is used")
    return config, notes


# -- writing --------------------------------------------------------------------------------------------
def _write_json(out, name: str, doc: dict, stage):
    atomic_write_text(out.path(name), json.dumps(doc, indent=2, sort_keys=True) + "\n", stage=stage)


def _export_record(system_dir, form: str, sampler: str, options: dict, notes, extra) -> dict:
    record, doc = systems.read_record(system_dir)
    return {
        "format": 1,
        "pipeline": form,
        "system": record.to_dict(),
        "versions": {**doc.get("versions", {}), **systems.package_versions(), "diffusers": diffusers_version()},
        "providers": doc.get("providers", {}),
        "source": extra.get("source", str(system_dir)),
        "sampler": {"name": sampler, "options": options},
        "agreement": list(notes),
        "extra": {k: v for k, v in extra.items() if k != "source"},
    }


def pipeline_source() -> str:
    """The text of `pipeline_d2it.py`, the custom pipeline written into D²iT exports."""
    return importlib.resources.files("d2it_cli.interop").joinpath("diffusers_pipeline.py").read_text()


def export_diffusers(
    system_dir, out, *, pipeline: str = "auto", sampler: str | None = None, sampler_options: dict | None = None,
    overwrite: bool = False, extra: dict | None = None, registry=None,
) -> dict:  # fmt: skip
    """Write the diffusers form of the system in `system_dir` into folder `out`; returns a summary.

    pipeline: `auto` (DiTPipeline when the system fits it, else the d2it custom pipeline), `dit` or `d2it`.
    sampler / sampler_options: the sampler the export samples with (default the system's, as `d2it
        sample --sampler --set sampler.X=Y`): DiTPipeline's scheduler, the custom pipeline's default.
    extra: recorded in `d2it_export.json` (e.g. the checkpoint a run export came from).
    `out` is claimed as `d2it export` claims a system directory: new, empty or an earlier export
    (replaced only with `overwrite`); a user's file there is never replaced.
    """
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    registry = registry or default_registry()
    system_dir = Path(system_dir)
    record, _ = systems.read_record(system_dir)
    sampler, options = resolve_sampler(record, sampler, sampler_options, registry)
    system = systems.load(system_dir, registry).eval()
    problems = dit_pipeline_problems(system)
    if pipeline == "dit" and problems:
        raise ConfigError(f"the system in {system_dir} cannot be a DiTPipeline: {'; '.join(problems)}")
    form = "dit" if pipeline == "dit" or (pipeline == "auto" and not problems) else "d2it"
    extra = dict(extra or {})
    policy = dict(overwrite=overwrite, exists=EXPORT_EXISTS)
    with outputs.claimed(out, KIND, what="diffusers export", **policy) as claim, staged_writes() as stage:
        if form == "dit":
            notes = _write_dit(system, claim, sampler, options, stage, registry)
            name = "DiTPipeline"
        else:
            notes = _write_d2it(system_dir, system, claim, sampler, stage)
            name = PIPELINE_CLASS
        doc = _export_record(system_dir, name, sampler, options, notes, extra)
        _write_json(claim, EXPORT_RECORD, doc, stage)
    summary = {"out": str(out), "pipeline": name, "sampler": sampler, "agreement": notes}
    if form == "d2it" and pipeline == "auto" and problems:
        summary["why_not_dit"] = problems
    return summary


def _write_dit(system, claim, sampler, options, stage, registry) -> list[str]:
    learn_sigma = bool(getattr(system.content, "learn_sigma", True))
    transformer, t_tensors = dit_transformer(system)
    vae, v_tensors = vae_f8_autoencoder(system)
    scheduler, notes = scheduler_for(system.record, sampler, options, learn_sigma=learn_sigma, registry=registry)
    meta = {"format": "pt"}
    for folder, config, tensors in (("transformer", transformer, t_tensors), ("vae", vae, v_tensors)):
        _write_json(claim, f"{folder}/config.json", config, stage)
        save_safetensors(tensors, claim.path(f"{folder}/{WEIGHTS}"), meta, stage=stage)
    _write_json(claim, "scheduler/scheduler_config.json", scheduler, stage)
    index = {
        "_class_name": "DiTPipeline",
        "_diffusers_version": diffusers_version(),
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    _write_json(claim, MODEL_INDEX, index, stage)
    guidance = system.record.options.get("guidance", {}).get("channels", "all")
    notes = [
        "diffusers' DiTTransformer2DModel embeds timesteps with frequencies exp(-ln(1e4) i / (half - 1)); DiT and "
        "d2it divide by half, and no config entry changes it: setting `downscale_freq_shift = 0` on every "
        "block's `norm1.emb.time_proj` after loading gives d2it's numbers",
        *notes,
    ]
    if guidance == "dit":
        notes.append(
            "DiTPipeline guides all latent channels; this system guides the first three (DiT's forward_with_cfg), "
            "so guided samples differ"
        )
    if getattr(system.content, "null_class", None) is None:
        notes.append("the backbone has no null class (class_dropout 0): sample it with guidance_scale 1")
    return notes


def _write_d2it(system_dir: Path, system, claim, sampler, stage) -> list[str]:
    names = [f"{stem}.safetensors" for stem in system.weight_modules()] + [systems.RECORD_FILE]
    for name in names:  # the system's own files, byte for byte (its record keeps its extra and providers)
        with atomic_path(claim.path(f"{SYSTEM_FOLDER}/{name}"), stage) as tmp:
            shutil.copy2(system_dir / name, tmp)
    atomic_write_text(claim.path(f"{SYSTEM_FOLDER}/{SYSTEM_MODULE}.py"), SYSTEM_MODULE_SOURCE, stage=stage)
    atomic_write_text(claim.path(f"{PIPELINE_MODULE}.py"), pipeline_source(), stage=stage)
    index = {
        "_class_name": [PIPELINE_MODULE, PIPELINE_CLASS],
        "_diffusers_version": diffusers_version(),
        "system": [SYSTEM_MODULE, "System"],
        "sampler": sampler,
    }
    _write_json(claim, MODEL_INDEX, index, stage)
    return [
        "the pipeline calls d2it (d2it_sampling.Pipeline): its images equal `d2it sample`'s for the same seed, "
        "classes, steps and guidance; `generator`'s seed (initial_seed()) is d2it's --seed"
    ]
