"""`d2it import dit|sd-vae` and `d2it push`: published weights in, systems out to the Hugging Face Hub."""

import json

import click

from d2it_cli.commands.params import POSITIVE_FLOAT, POSITIVE_INT

SD_VAE_NAMES = ("sd-vae-ft-ema", "sd-vae-ft-mse")


def _done(system, out, as_json: bool, what: str):
    record = system.record
    summary = {
        "out": str(out),
        "backbone": record.backbone,
        "vae": record.vae,
        "image_size": record.image_size,
        "num_classes": record.num_classes,
        "latent_scale": record.latent_scale,
        "guidance": record.options.get("guidance", {}).get("channels"),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"imported {what} into {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "out"))


@click.group(name="import")
def import_group():
    """Turn published weights (an official DiT checkpoint, Stable Diffusion's VAE) into a d2it system."""


@import_group.command("dit")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False),
    help="DiT checkpoint: the raw state dict DiT publishes (e.g. DiT-XL-2-256x256.pt) or .safetensors.",
)
@click.option(
    "--vae",
    default=None,
    metavar=f"{'|'.join(SD_VAE_NAMES)}|PATH",
    help="The VAE: a Hub name (downloaded once, needs a connection), a diffusers AutoencoderKL folder "
    "or an LDM checkpoint. Without it the system generates latents only.",
)
@click.option(
    "--num-heads", type=POSITIVE_INT, default=None, help="Attention heads, for a width none of DiT's sizes has."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="System directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace the system already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def import_dit_command(obj, checkpoint, vae, num_heads, out, overwrite, as_json):
    """An official DiT checkpoint (256 or 512 px) with DiT's sampling: 250 DDPM steps, guidance on 3 channels."""
    from d2it_cli.interop import hub, import_dit

    vae_path = hub.resolve_vae(vae) if vae else None
    system = import_dit(
        checkpoint, out, vae=vae_path, num_heads=num_heads, overwrite=overwrite, registry=(obj or {}).get("registry")
    )
    _done(system, out, as_json, "DiT")


@import_group.command("sd-vae")
@click.argument("source", metavar=f"{'|'.join(SD_VAE_NAMES)}|PATH")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="System directory: its VAE becomes this one (created, as `d2it build` would, if missing).",
)
@click.option(
    "--latent-scale",
    type=POSITIVE_FLOAT,
    default=None,
    help="Latent scale (default the folder's scaling_factor; 0.18215 for LDM checkpoints).",
)
@click.option(
    "--backbone",
    default=None,
    help="Backbone of a new system (required when --out holds no system; its stage-2 parts start random).",
)
@click.option("--image-size", default=None, type=POSITIVE_INT, help="Image size of a new system [default: 256].")
@click.option("--num-classes", default=None, type=POSITIVE_INT, help="Classes of a new system [default: 1000].")
@click.option("--set", "sets", multiple=True, metavar="SLOT.OPTION=VALUE", help="Options of a new system.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def import_sd_vae_command(obj, source, out, latent_scale, backbone, image_size, num_classes, sets, as_json):
    """Stable Diffusion's KL-f8 VAE (a diffusers AutoencoderKL folder or an LDM checkpoint) as `vae-f8`."""
    from d2it.config import parse_sets
    from d2it.errors import ConfigError
    from d2it.system import SystemRecord
    from d2it_cli.interop import hub, import_sd_vae
    from d2it_cli.interop.sd_vae import check_import_target

    record = None
    if backbone is not None:
        size, classes = image_size or 256, num_classes or 1000
        record = SystemRecord(backbone=backbone, image_size=size, num_classes=classes, options=parse_sets(sets))
    elif image_size or num_classes or sets:
        raise ConfigError("--image-size, --num-classes and --set describe a new system: name its --backbone too")
    if source in SD_VAE_NAMES or hub.is_hub(source):
        check_import_target(out, record)  # before anything is downloaded
    path = hub.resolve_vae(source)
    system = import_sd_vae(path, out, record=record, latent_scale=latent_scale, registry=(obj or {}).get("registry"))
    _done(system, out, as_json, "the VAE")


@click.command()
@click.argument("system_dir", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--revision", default=None, help="Branch to push to (default the repository's main branch).")
@click.option("--message", default=None, help="Commit message.")
@click.option("--dry-run", is_flag=True, help="Write the model card and list the files, upload nothing.")
@click.pass_obj
def push(obj, system_dir, repo_id, private, revision, message, dry_run):
    """Upload a system or its diffusers export, with a generated model card, to the Hugging Face Hub."""
    from d2it_cli.interop import hub

    result = hub.push_system(
        system_dir, repo_id, private=private, revision=revision, message=message, dry_run=dry_run,
        registry=(obj or {}).get("registry"),
    )  # fmt: skip
    files = ", ".join(result["files"])
    if dry_run:
        click.echo(f"would upload to {repo_id}: {files}")
        return
    if result["diffusers"]:
        load = f'DiffusionPipeline.from_pretrained("{repo_id}"' + (
            ", trust_remote_code=True)" if "pipeline_d2it.py" in result["files"] else ")"
        )
        click.echo(f"pushed {system_dir} to {result['url']} ({files}); load it with {load}")
        return
    click.echo(f"pushed {system_dir} to {result['url']} ({files}); load it with --system hf://{repo_id}")
