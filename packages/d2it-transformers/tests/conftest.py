"""Shared tiny builders for d2it-transformers tests."""

import pytest
import torch

from d2it.registry import default_registry

TINY = {"depth": 2, "hidden_size": 32, "num_heads": 2}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def build_content(refine="window4", *, grains=2, input_size=8, attention="sdpa", seed=0, backbone="dit-s", **options):
    """A tiny Dynamic Content Transformer from the registry (backbone depth 2, width 32, 2 heads)."""
    torch.manual_seed(seed)
    reg = default_registry()
    att = reg.create("attention", attention)
    overrides = {**TINY, **options}
    bb = reg.create(
        "backbone",
        backbone,
        overrides,
        input_size=input_size,
        in_channels=4,
        num_classes=10,
        grains=grains,
        attention=att,
    )
    return reg.create("refiner", refine, backbone=bb, attention=att)


def random_inputs(model, batch=2, seed=0, grain_map=None):
    """x_t in the copied layout on a random mixed grain map (both grains present), t and y."""
    from d2it.layout import multigrain_noise

    g = torch.Generator().manual_seed(seed)
    k = model.grains
    grid = model.input_size // 2 ** (k - 1)
    if grain_map is None:
        grain_map = torch.randint(0, k, (batch, grid, grid), generator=g)
        grain_map[:, 0, 0], grain_map[:, -1, -1] = 0, k - 1  # every grain appears
    x = multigrain_noise(grain_map, k, model.in_channels, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    return x, t, y, grain_map


def train_steps(model, steps=2, lr=1e-2, seed=0):
    """A few Adam steps on random targets so zero-initialised layers become non-zero; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, t, y, gm = random_inputs(model, seed=seed)
    target = torch.randn(x.shape[0], model.out_channels, *x.shape[2:], generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, y, gm), target).backward()
        opt.step()
    return model.eval()


@pytest.fixture
def content():
    """The tiny content-model builder."""
    return build_content


@pytest.fixture
def inputs():
    """The random-input builder."""
    return random_inputs


@pytest.fixture
def train():
    """The few-steps trainer."""
    return train_steps
