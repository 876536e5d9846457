"""Component specs: what a plugin registers for one component.

A spec's `factory` and `config` are either the objects themselves or lazy references,
"package.module:attr" strings imported on first use (and then cached). With references, listing
components (`d2it plugins`) imports no model code: only building one does.
"""

import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

import attrs

from d2it.config import build_config
from d2it.errors import ConfigError, D2itError
from d2it.hookspecs import KINDS

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")
# the entry-point object reference syntax: dotted module path, a colon, a dotted attribute path
REF_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _check_name(instance, attribute, value):
    if not NAME_RE.match(value):
        raise ValueError(f"component name {value!r} must be lowercase letters, digits and . _ / -")


def _check_kind(instance, attribute, value):
    if value not in KINDS:
        raise ValueError(f"unknown component kind {value!r}; kinds are {', '.join(KINDS)}")


@attrs.frozen
class EmptyConfig:
    """Options of a component that has none."""


def _import_ref(ref: str):
    """The object a "package.module:attr" reference names; ImportError/AttributeError if it does not resolve."""
    module_name, _, attr_path = ref.partition(":")
    return functools.reduce(getattr, attr_path.split("."), importlib.import_module(module_name))


@attrs.frozen
class ComponentSpec:
    """One registered component: its name, kind, factory and option class (each an object or a lazy reference)."""

    name: str = attrs.field(validator=_check_name)
    kind: str = attrs.field(validator=_check_kind)
    factory_ref: Callable[..., Any] | str = attrs.field(alias="factory")
    config_ref: type | str = attrs.field(default=EmptyConfig, alias="config")
    summary: str = ""
    aliases: tuple = attrs.field(default=(), converter=tuple)
    dist: str = "?"
    version: str = "?"
    # resolved references, filled on first use; not part of the spec's identity
    _resolved: dict = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        for role, ref in (("factory", self.factory_ref), ("config", self.config_ref)):
            if isinstance(ref, str) and not REF_RE.match(ref):
                raise ConfigError(
                    f"{self.kind} {self.name!r}: {role} reference {ref!r} must look like 'package.module:attr'"
                )
        if not isinstance(self.config_ref, str) and not attrs.has(self.config_ref):
            raise ConfigError(f"{self.kind} {self.name!r}: config must be an attrs class")
        for alias in self.aliases:
            _check_name(self, None, alias)

    @property
    def factory(self) -> Callable[..., Any]:
        """The factory, imported on first use when given as a reference."""
        return self._resolve("factory", self.factory_ref)

    @property
    def config(self) -> type:
        """The attrs option class, imported on first use when given as a reference."""
        return self._resolve("config", self.config_ref)

    def _resolve(self, role: str, ref):
        if not isinstance(ref, str):
            return ref
        if role not in self._resolved:
            try:
                obj = _import_ref(ref)
            except (ImportError, AttributeError) as exc:
                raise D2itError(
                    f"{self._label()} cannot be loaded: its {role} {ref!r} does not import ({type(exc).__name__}: "
                    f"{exc}); reinstall or upgrade {self._provider()}"
                ) from None
            if role == "config" and not (isinstance(obj, type) and attrs.has(obj)):
                raise ConfigError(f"{self._label()}: its config {ref!r} is not an attrs class")
            if role == "factory" and not callable(obj):
                raise ConfigError(f"{self._label()}: its factory {ref!r} is not callable")
            self._resolved[role] = obj
        return self._resolved[role]

    def _provider(self) -> str:
        return "the plugin that provides it" if self.dist == "?" else self.dist

    def _label(self) -> str:
        where = "" if self.dist == "?" else f" from {self.dist} {self.version}"
        return f"{self.kind.replace('_', ' ')} {self.name!r}{where}"

    def make_config(self, overrides=None):
        """Build this component's config from defaults plus overrides (strings are parsed)."""
        return build_config(self.config, overrides or {}, where=self.kind)
