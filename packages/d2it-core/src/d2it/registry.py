"""The plugin registry: loads `d2it` entry points with pluggy and looks components up by kind and name."""

import importlib.metadata as md
import os
import re
import warnings
from collections.abc import Iterable
from contextlib import contextmanager

import attrs
import pluggy

from d2it.config import build_config
from d2it.errors import ConfigError, D2itError, DuplicateComponentError, PluginWarning, UnknownComponentError
from d2it.hookspecs import KIND_HOOKS, KINDS, PROJECT, D2itSpec
from d2it.spec import ComponentSpec

ENTRY_POINT_GROUP = "d2it"
BUILTIN_DISTS = frozenset({"d2it-core", "d2it-vae", "d2it-transformers", "d2it-sampling", "d2it-cli"})
DISABLE_ENV = "D2IT_DISABLE_PLUGINS"


def normalize(dist: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _disabled_from_env() -> frozenset:
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(normalize(p.strip()) for p in raw.split(",") if p.strip())


def _kind_label(kind: str) -> str:
    return kind.replace("_", " ")


class Registry:
    """Components registered by plugins, looked up by (kind, name)."""

    def __init__(self):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(D2itSpec)
        self._provenance: dict[str, tuple[str, str]] = {}
        self._specs: dict[str, list[ComponentSpec]] | None = None
        self.failed: list[str] = []

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_entry_points(cls, builtins_only: bool = False, disabled: Iterable[str] = ()):
        """A registry holding every installed plugin (or only d2it's own), minus disabled ones."""
        reg = cls()
        reg.load_entry_points(builtins_only=builtins_only, disabled=disabled)
        return reg

    def load_entry_points(self, builtins_only: bool = False, disabled: Iterable[str] = ()):
        """Register each distribution's `d2it` entry points once; a plugin that fails warns and is skipped."""
        skip = {normalize(d) for d in disabled} | _disabled_from_env()
        seen: set[str] = set()
        for dist in md.distributions():
            name = normalize(dist.metadata["Name"] or "")
            # a distribution visible twice on sys.path is loaded once (the first wins, like import)
            if not name or name in seen:
                continue
            seen.add(name)
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not eps or name in skip or (builtins_only and name not in BUILTIN_DISTS):
                continue
            for ep in sorted(eps, key=lambda e: e.name):
                try:
                    plugin = ep.load()
                except Exception as exc:  # any import error of a third-party plugin
                    self._fail(name, dist.version, exc)
                    continue
                self.register(plugin, f"{name}:{ep.name}", dist=name, version=dist.version)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise D2itError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None

    def _fail(self, dist: str, version: str, exc: Exception):
        self.failed.append(dist)
        warnings.warn(
            f"d2it plugin {dist} {version} failed to load and was skipped ({type(exc).__name__}: {exc})",
            PluginWarning,
            stacklevel=3,
        )

    def register(self, plugin, name: str, dist: str = "?", version: str = "?"):
        """Register a plugin object (module or instance) under `name`, attributed to `dist`."""
        self.pm.register(plugin, name=name)
        self._provenance[name] = (dist, version)
        self._specs = None

    # -- look-ups --------------------------------------------------------------------------
    def _collect(self) -> dict[str, list[ComponentSpec]]:
        table: dict[str, list[ComponentSpec]] = {k: [] for k in KINDS}
        for kind, hook_name in KIND_HOOKS.items():
            owners: dict[str, ComponentSpec] = {}
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                dist, version = self._provenance.get(impl.plugin_name, (impl.plugin_name, "?"))
                try:
                    specs = list(impl.function() or [])
                except Exception as exc:
                    self._fail(dist, version, exc)
                    continue
                for spec in specs:
                    if not isinstance(spec, ComponentSpec) or spec.kind != kind:
                        raise D2itError(f"plugin {dist} returned a non-{kind} spec from {hook_name}: {spec!r}")
                    spec = attrs.evolve(spec, dist=dist, version=version)
                    for key in (spec.name, *spec.aliases):
                        if key in owners:
                            other = owners[key]
                            raise DuplicateComponentError(
                                f"{_kind_label(kind)} {key!r} is registered twice: by {other.dist} "
                                f"{other.version} and by {spec.dist} {spec.version}; uninstall one or "
                                f"disable it with {DISABLE_ENV}"
                            )
                        owners[key] = spec
                    table[kind].append(spec)
            table[kind].sort(key=lambda s: s.name)
        return table

    def specs(self, kind: str) -> list[ComponentSpec]:
        """All specs of a kind, sorted by name."""
        if kind not in KIND_HOOKS:
            raise D2itError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if self._specs is None:
            self._specs = self._collect()
        return list(self._specs[kind])

    def names(self, kind: str) -> list[str]:
        """Sorted names of a kind (aliases not included)."""
        return [s.name for s in self.specs(kind)]

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec registered as `name` (or an alias of it); unknown names list the valid ones."""
        for spec in self.specs(kind):
            if name == spec.name or name in spec.aliases:
                return spec
        valid = ", ".join(self.names(kind)) or "none installed"
        raise UnknownComponentError(f"unknown {_kind_label(kind)} {name!r}; valid {_kind_label(kind)}s: {valid}")

    def create(self, kind: str, name: str, overrides=None, *, where: str | None = None, **context):
        """Build a component: its factory called with its config (defaults + overrides) and context."""
        spec = self.get(kind, name)
        if isinstance(overrides, spec.config):
            config = overrides
        else:
            config = build_config(spec.config, dict(overrides or {}), where=where or kind)
        try:
            return spec.factory(config, **context)
        except D2itError:
            raise
        except (ValueError, ZeroDivisionError, AssertionError, RuntimeError) as exc:
            if "OutOfMemory" in type(exc).__name__:  # a resource problem, not a bad option
                raise
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"{where or kind} {spec.name!r} cannot be built with these options ({detail})") from None

    def add_commands(self, cli):
        """Let every plugin add its click commands to `cli`."""
        self.pm.hook.d2it_commands(cli=cli)


_current: list[Registry] = []


def default_registry() -> Registry:
    """The registry in use: the innermost `use_registry`, else every installed plugin (loaded once)."""
    if not _current:
        _current.append(Registry.from_entry_points())
    return _current[-1]


@contextmanager
def use_registry(registry: Registry):
    """Make `registry` the default inside the block (tests, `d2it --no-plugins`)."""
    _current.append(registry)
    try:
        yield registry
    finally:
        _current.remove(registry)


def create(kind: str, name: str, overrides=None, **context):
    """Build a component from the default registry."""
    return default_registry().create(kind, name, overrides, **context)


def get(kind: str, name: str) -> ComponentSpec:
    """Look a spec up in the default registry."""
    return default_registry().get(kind, name)


def names(kind: str) -> list[str]:
    """Sorted component names of a kind in the default registry."""
    return default_registry().names(kind)
