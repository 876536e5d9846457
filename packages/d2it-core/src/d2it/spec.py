"""Component specs: what a plugin registers for one component."""

import re
from collections.abc import Callable
from typing import Any

import attrs

from d2it.config import build_config
from d2it.errors import ConfigError
from d2it.hookspecs import KINDS

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")


def _check_name(instance, attribute, value):
    if not NAME_RE.match(value):
        raise ValueError(f"component name {value!r} must be lowercase letters, digits and . _ / -")


def _check_kind(instance, attribute, value):
    if value not in KINDS:
        raise ValueError(f"unknown component kind {value!r}; kinds are {', '.join(KINDS)}")


@attrs.frozen
class EmptyConfig:
    """Options of a component that has none."""


@attrs.frozen
class ComponentSpec:
    """One registered component: its name, kind, factory and option class."""

    name: str = attrs.field(validator=_check_name)
    kind: str = attrs.field(validator=_check_kind)
    factory: Callable[..., Any]
    config: type = EmptyConfig
    summary: str = ""
    aliases: tuple = attrs.field(default=(), converter=tuple)
    dist: str = "?"
    version: str = "?"

    def __attrs_post_init__(self):
        if not attrs.has(self.config):
            raise ConfigError(f"{self.kind} {self.name!r}: config must be an attrs class")
        for alias in self.aliases:
            _check_name(self, None, alias)

    def make_config(self, overrides=None):
        """Build this component's config from defaults plus overrides (strings are parsed)."""
        return build_config(self.config, overrides or {}, where=self.kind)
