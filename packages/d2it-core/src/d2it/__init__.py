"""d2it: the core of the D²iT toolkit (registry, specs, configs, systems, checkpoints, attention)."""

from importlib.metadata import PackageNotFoundError, version

from d2it.errors import (
    CheckpointError,
    ConfigError,
    D2itError,
    DataError,
    DuplicateComponentError,
    PluginWarning,
    UnknownComponentError,
)
from d2it.hookspecs import KINDS, hookimpl, hookspec
from d2it.plugin_api import PLUGIN_API, RESERVED_OPTIONS, require_plugin_api
from d2it.registry import Registry, create, default_registry, get, names, use_registry
from d2it.spec import ComponentSpec, EmptyConfig

try:
    __version__ = version("d2it-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

# name -> module of what `import d2it` offers without importing it (torch) until first use
_LAZY = {"System": "d2it.system"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "PLUGIN_API",
    "RESERVED_OPTIONS",
    "CheckpointError",
    "ComponentSpec",
    "ConfigError",
    "D2itError",
    "DataError",
    "DuplicateComponentError",
    "EmptyConfig",
    "PluginWarning",
    "Registry",
    "System",
    "UnknownComponentError",
    "create",
    "default_registry",
    "get",
    "hookimpl",
    "hookspec",
    "names",
    "require_plugin_api",
    "use_registry",
]
