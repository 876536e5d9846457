"""Fixtures for d2it-core tests: a tiny fake backbone plugin."""

import attrs
import pytest
import torch
from torch import nn

import d2it
from d2it.testing import registry_with


@attrs.frozen
class TinyConfig:
    """Options of the test backbone."""

    width: int = 8
    scale: float = 1.0
    learn_sigma: bool = False
    tag: str | None = None
    dims: tuple[int, ...] = (1, 2)


class TinyBackbone(nn.Module):
    """A one-layer noise predictor with the content-model attributes."""

    def __init__(self, config, *, input_size, in_channels, num_classes, grains, attention):
        super().__init__()
        self.input_size, self.in_channels, self.num_classes, self.grains = input_size, in_channels, num_classes, grains
        self.learn_sigma = config.learn_sigma
        self.out_channels = in_channels * (2 if config.learn_sigma else 1)
        self.proj = nn.Conv2d(in_channels, config.width, 1)
        self.out = nn.Conv2d(config.width, self.out_channels, 1)
        self.emb = nn.Embedding(num_classes + 1, config.width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, y, grain_map=None):
        h = self.proj(x) + self.emb(y)[:, :, None, None] + t.float()[:, None, None, None] * 1e-3
        return self.out(torch.nn.functional.silu(h))

    def example_inputs(self, batch):
        n = self.input_size
        return (
            torch.zeros(batch, self.in_channels, n, n),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, dtype=torch.long),
        )


class TinyPlugin:
    """Registers `tiny` backbones (one with an alias)."""

    @d2it.hookimpl
    def d2it_backbones(self):
        return [
            d2it.ComponentSpec(
                "tiny", "backbone", TinyBackbone, TinyConfig, summary="test backbone", aliases=("tiny-alias",)
            ),
        ]


@pytest.fixture
def tiny_registry():
    """A registry with core's built-ins and the tiny backbone, made the default."""
    reg = registry_with(TinyPlugin())
    with d2it.use_registry(reg):
        yield reg
