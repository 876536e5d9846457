"""The sampling options `d2it sample` and `d2it eval sample-and-score` share, declared once."""

import functools

import click

from d2it_cli.commands.params import BATCH, NON_NEGATIVE_FLOAT, SEED

# the options' parameter names, which are also the matching `generation.SampleSettings` fields
FIELDS = ("classes_uniform", "steps", "sampler", "cfg_scale", "grain_cfg_scale", "seed", "batch")


def _options(batch: int) -> list:
    """The click options in the order `--help` lists them."""
    return [
        click.option(
            "--classes-uniform", is_flag=True, help="Every class equally often (default: random classes, as DiT)."
        ),
        click.option(
            "--steps",
            default=None,
            type=click.IntRange(min=1),
            help="Sampling steps (default: the sampler's `steps` option, e.g. ddpm 250, dpmpp-2m 25).",
        ),
        click.option("--sampler", default=None, help="Sampler component (default: the system's)."),
        click.option(
            "--cfg-scale",
            default=1.5,
            show_default=True,
            type=NON_NEGATIVE_FLOAT,
            help="Classifier-free guidance scale (1 = off).",
        ),
        click.option(
            "--grain-cfg-scale",
            default=1.0,
            show_default=True,
            type=NON_NEGATIVE_FLOAT,
            help="Guidance scale of the grain predictor.",
        ),
        click.option("--seed", default=0, show_default=True, type=SEED, help="Sampling seed."),
        click.option(
            "--batch", default=batch, show_default=True, type=BATCH, help="Samples per batch (and per shard)."
        ),
    ]


def sampling_options(batch: int):
    """Add the sampling options to a command and hand them to it as one `sampling` dict of `SampleSettings` fields.

    batch: the command's default `--batch`.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            sampling = {name: kwargs.pop(name) for name in FIELDS}
            return fn(*args, sampling=sampling, **kwargs)

        for option in reversed(_options(batch)):  # click lists options in the order their decorators read
            command = option(command)
        return command

    return decorate
