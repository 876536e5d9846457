"""pytest fixtures shipped with d2it (loaded through the `pytest11` entry point)."""

import pytest

from d2it.registry import Registry, use_registry


@pytest.fixture
def fresh_registry():
    """A newly loaded registry of every installed plugin, made the default for the test."""
    reg = Registry.from_entry_points()
    with use_registry(reg):
        yield reg


@pytest.fixture
def empty_registry():
    """A registry with no plugins at all, made the default for the test."""
    reg = Registry()
    with use_registry(reg):
        yield reg


def pytest_configure(config):
    """Register the `gpu` marker."""
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests on machines without CUDA."""
    import torch  # here, not at the top: this plugin loads in every pytest run, most of which never get here

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
