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
from d2it.registry import Registry, create, default_registry, get, names, use_registry
from d2it.spec import ComponentSpec, EmptyConfig

try:
    __version__ = version("d2it-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "KINDS",
    "CheckpointError",
    "ComponentSpec",
    "ConfigError",
    "D2itError",
    "DataError",
    "DuplicateComponentError",
    "EmptyConfig",
    "PluginWarning",
    "Registry",
    "UnknownComponentError",
    "create",
    "default_registry",
    "get",
    "hookimpl",
    "hookspec",
    "names",
    "use_registry",
]
