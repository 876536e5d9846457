"""Component options: typed attrs configs built from defaults, JSON and `--set slot.key=value` strings."""

import types
import typing
from typing import Any

import attr
import attrs

from d2it.checks import check_config
from d2it.errors import ConfigError

_SCALARS = (bool, int, float, str)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"tuple of {_type_name(typing.get_args(tp)[0])}"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _parse_scalar(tp, text: str):
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if tp is type(None):
        if text.strip().lower() in ("none", "null", ""):
            return None
        raise ValueError(text)
    return tp(text)


def coerce(tp, value):
    """Convert `value` (a string from the command line or a JSON value) to type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))
        ):
            return None
        # try None last so that "none" only wins when nothing else parses
        for arg in sorted(args, key=lambda a: a is type(None)):
            try:
                return coerce(arg, value)
            except (ValueError, TypeError):
                continue
        raise ValueError(value)
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
        else:
            parts = list(value)
        return tuple(coerce(item, p) for p in parts)
    if tp in _SCALARS or tp is type(None):
        if isinstance(value, str):
            return _parse_scalar(tp, value)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is type(None) and value is None:
            return None
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise TypeError(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported option type {tp!r}")


def fields_of(cls) -> dict:
    """Name -> attrs field of a config class, with string annotations resolved."""
    attrs.resolve_types(cls)
    return {f.name: f for f in attrs.fields(cls)}


def build_config(cls, overrides: dict, where: str = "component"):
    """Instantiate `cls` from its defaults and `overrides`, naming any bad option in the error."""
    fields = fields_of(cls)
    kwargs = {}
    for key, value in overrides.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where} has no option {key!r}; valid options: {valid}")
        tp = fields[key].type
        try:
            kwargs[key] = coerce(tp, value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}.{key} expects {_type_name(tp)}, got {value!r}") from None
    try:
        config = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}" if str(exc)[:1].islower() else f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return check_config(config, where)


def config_to_dict(config) -> dict:
    """A config instance as a JSON-ready dict (tuples become lists)."""
    return attr.asdict(config, retain_collection_types=False)


def config_options(cls) -> list[tuple[str, str, Any]]:
    """(name, type name, default) for each option of a config class."""
    out = []
    for name, f in fields_of(cls).items():
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
        out.append((name, _type_name(f.type), default))
    return out


def parse_sets(items) -> dict[str, dict[str, str]]:
    """Parse `slot.option=value` strings into {slot: {option: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        slot, dot, option = key.strip().partition(".")
        if not sep or not dot or not slot or not option:
            raise ConfigError(f"--set expects slot.option=value, got {item!r}")
        out.setdefault(slot, {})[option] = value
    return out
