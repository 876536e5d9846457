"""A third-party d2it plugin: registers the `example-tiny` backbone and the `example-hello` command."""

import math

import attrs
import click
import torch
from torch import nn

import d2it


@attrs.frozen
class ExampleConfig:
    """Options of `example-tiny`."""

    width: int = 16
    learn_sigma: bool = True


class ExampleTiny(nn.Module):
    """A small convolutional noise predictor conditioned on timestep and class."""

    def __init__(self, config, *, input_size, in_channels, num_classes, grains, attention):
        super().__init__()
        self.input_size, self.in_channels, self.num_classes, self.grains = input_size, in_channels, num_classes, grains
        self.learn_sigma = config.learn_sigma
        self.out_channels = in_channels * (2 if config.learn_sigma else 1)
        self.width = config.width
        self.inp = nn.Conv2d(in_channels, config.width, 3, padding=1)
        self.cond = nn.Embedding(num_classes + 1, config.width)
        self.t_proj = nn.Linear(config.width, config.width)
        self.out = nn.Conv2d(config.width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def timestep_features(self, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, t, y, grain_map=None):
        c = self.cond(y) + self.t_proj(self.timestep_features(t))
        return self.out(torch.nn.functional.silu(self.inp(x) + c[:, :, None, None]))

    def example_inputs(self, batch):
        n = self.input_size
        return (
            torch.zeros(batch, self.in_channels, n, n),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, dtype=torch.long),
        )


@d2it.hookimpl
def d2it_backbones():
    """The example backbone."""
    return [
        d2it.ComponentSpec(
            "example-tiny", "backbone", ExampleTiny, ExampleConfig, summary="example third-party backbone"
        )
    ]


@click.command("example-hello")
def example_hello():
    """Say hello from the example plugin."""
    click.echo("hello from d2it-example-plugin")


@d2it.hookimpl
def d2it_commands(cli):
    """Add the example command."""
    cli.add_command(example_hello)
