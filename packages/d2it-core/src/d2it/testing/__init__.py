"""Test helpers for d2it and third-party plugins: registries, fixtures and conformance suites.

Conformance suites are plain pytest classes; subclass one in your package's tests, set `name` to
your registered component and `overrides` to a tiny config, and pytest runs every check on it.
"""

import d2it.plugin
from d2it.registry import Registry


def registry_with(*plugins, entry_points: bool = False) -> Registry:
    """A registry holding d2it-core's built-ins plus the given plugin objects (and optionally all installed)."""
    reg = Registry.from_entry_points() if entry_points else Registry()
    if not entry_points:
        reg.register(d2it.plugin, "d2it-core:d2it-core", dist="d2it-core", version="test")
    for i, plugin in enumerate(plugins):
        reg.register(plugin, f"test-plugin-{i}", dist=f"test-plugin-{i}", version="0")
    return reg
