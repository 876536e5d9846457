"""The built-in `d2it` commands; each module defines one click command or group.

`LAZY_COMMANDS` names each command's module and one-line help without importing it, so `d2it --help`
lists them without loading torch-fidelity, torchvision or any model code; a command's module is
imported when it runs or shows its own help. `COMMANDS` (the command objects) imports them all.
"""

import importlib

# name -> ("module:attribute", short help), in the order of the workflow; `d2it --help` lists them alphabetically
LAZY_COMMANDS = {
    "build": ("d2it_cli.commands.build:build",
              "Assemble a system, print its parts with parameters and GMACs, and optionally save it."),
    "plugins": ("d2it_cli.commands.plugins:plugins",
                "List registered components (name, kind, provider, version, summary)."),
    "pack": ("d2it_cli.commands.pack:pack", "Pack an image folder into webdataset tar shards with the class index "
                                            "mapping (classes.json) beside them."),
    "thresholds": ("d2it_cli.commands.thresholds:thresholds", "Region entropies over a dataset: percentiles 1-99 to "
                                                              "--out, thresholds for --ratio into the system record."),
    "train": ("d2it_cli.commands.train:train",
              "Train a part of a system: the DVAE (stage 1), then the grain and content transformers (stage 2)."),
    "encode": ("d2it_cli.commands.encode:encode", "Encode a dataset into a latent cache and store the latent scale "
                                                  "(1/std) in the system record."),
    "sample": ("d2it_cli.commands.sample:sample", "Generate samples from a trained system: PNGs, a grid with "
                                                  "grain-map overlays and (--npz) samples.npz."),
    "export": ("d2it_cli.commands.export:export", "Write a loadable system directory from a training checkpoint, or "
                                                  "(--format diffusers) a diffusers pipeline."),
    "eval": ("d2it_cli.commands.evaluate:eval_group", "Evaluate: FID/IS/KID/precision-recall of samples, reference "
                                                      "statistics, VAE reconstructions."),
    "demo": ("d2it_cli.commands.demo:demo", "Build, train (DVAE, grain, content) and sample D²iT on emoji or "
                                            "synthetic data; report in OUT/index.html."),
    "import": ("d2it_cli.commands.interop:import_group", "Turn published weights (an official DiT checkpoint, Stable "
                                                         "Diffusion's VAE) into a d2it system."),
    "push": ("d2it_cli.commands.interop:push", "Upload a system or its diffusers export, with a generated model card, "
                                               "to the Hugging Face Hub."),
}  # fmt: skip


def load_command(name: str):
    """The click command `name` of `LAZY_COMMANDS`, importing its module."""
    module, _, attribute = LAZY_COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name):
    if name == "COMMANDS":  # every command object, imported on first use
        return [load_command(n) for n in LAZY_COMMANDS]
    raise AttributeError(name)
