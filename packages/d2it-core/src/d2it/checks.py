"""The validation layer: attrs validators and the shared option vocabulary every component config obeys.

Values are checked where they enter (a config built from `--set`, a record read from `d2it.json`,
a manifest, a checkpoint's state) so that nothing impossible reaches the code that would fail on
it later. Option names mean the same thing in every d2it component (`steps`, `depth`, `mlp_ratio` ...),
so their ranges are stated once here, in `OPTION_RULES`. They apply to d2it's own configs only: a
plugin's option of the same name is the plugin's (it validates it itself, e.g. with `number`).
"""

import math
from numbers import Integral, Real

import attrs

from d2it.errors import ConfigError


def is_number(value) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def describe(low=None, high=None, low_open=False, high_open=False, integer=False) -> str:
    """'an integer >= 1', 'a finite number in (0, 1)' ..."""
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def check_number(value, where: str, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Raise ConfigError unless `value` is a finite number (an integer if asked) within the bounds."""
    ok = is_int(value) if integer else is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{where} must be {describe(low, high, low_open, high_open, integer)}, got {value!r}")
    return value


def number(low=None, high=None, low_open=False, high_open=False, integer=False, optional=False):
    """An attrs validator for a (finite) number within bounds; `optional` also accepts None."""

    def validate(instance, attribute, value):
        if optional and value is None:
            return
        check_number(value, attribute.name, low, high, low_open, high_open, integer)

    return validate


finite = number()
positive = number(low=0, low_open=True)
non_negative = number(low=0)
probability = number(low=0, high=1)
at_least_one = number(low=1, integer=True)
non_negative_int = number(low=0, integer=True)


def of_type(*types, optional=False):
    """An attrs validator naming the expected JSON type."""

    def validate(instance, attribute, value):
        if optional and value is None:
            return
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
            raise ConfigError(f"{attribute.name} must be {names}, got {value!r}")

    return validate


# option name -> (low, high, low_open, high_open, integer): the shared vocabulary of component options
OPTION_RULES = {
    "num_timesteps": (1, None, False, False, True),
    "steps": (1, None, False, False, True),
    "depth": (1, None, False, False, True),
    "hidden_size": (1, None, False, False, True),
    "num_heads": (1, None, False, False, True),
    "latent_channels": (1, None, False, False, True),
    "base_width": (1, None, False, False, True),
    "norm_groups": (1, None, False, False, True),
    "num_res_blocks": (0, None, False, False, True),
    "attn_levels": (0, None, False, False, True),
    "decoder_attn_levels": (0, None, False, False, True),
    "grains": (1, None, False, False, True),
    "codebook_size": (1, None, False, False, True),
    "patch_size": (1, None, False, False, True),
    "region": (1, None, False, False, True),
    "bins": (2, None, False, False, True),
    "entropy_bins": (2, None, False, False, True),
    "window": (1, None, False, False, True),
    "mlp_ratio": (0, None, True, False, False),
    "sigma": (0, None, True, False, False),
    "entropy_sigma": (0, None, True, False, False),
    "dropout": (0, 1, False, True, False),
    "class_dropout": (0, 1, False, True, False),
    "fine_ratio": (0, 1, False, False, False),
    "ratio": (0, 1, False, False, False),
    "eta": (0, None, False, False, False),
    "temperature": (0, None, False, False, False),
    "ema_decay": (0, 1, False, False, False),
    "ema_eps": (0, None, True, False, False),
    "commitment": (0, None, False, False, False),
    "beta_start": (0, 1, True, True, False),
    "beta_end": (0, 1, True, True, False),
    "max_beta": (0, 1, True, True, False),
    "s": (0, None, False, False, False),
    # counts of metrics and other evaluators (KID subsets, precision/recall's k-th neighbour, IS splits ...)
    "subset_size": (1, None, False, False, True),
    "subsets": (1, None, False, False, True),
    "splits": (1, None, False, False, True),
    "neighborhood": (1, None, False, False, True),
    "batch_size": (1, None, False, False, True),
    "degree": (1, None, False, False, True),
}


# the top-level modules of d2it's own distributions: OPTION_RULES hold for configs defined in them
OWN_MODULES = frozenset({"d2it", "d2it_vae", "d2it_transformers", "d2it_sampling", "d2it_cli"})


def check_config(config, where: str = "component"):
    """Every float option finite; for d2it's own configs, every OPTION_RULES option in range, tuples of counts >= 1."""
    own = type(config).__module__.partition(".")[0] in OWN_MODULES
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        name = f"{where}.{field.name}"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not own:
            continue
        rule = OPTION_RULES.get(field.name)
        if rule is not None and value is not None and is_number(value):
            low, high, low_open, high_open, integer = rule
            check_number(value, name, low, high, low_open, high_open, integer and is_int(value))
        if isinstance(value, tuple) and field.name.endswith(("_mult", "_sizes")):
            for item in value:
                check_number(item, name, low=1, integer=is_int(item))
            if not value:
                raise ConfigError(f"{name} must not be empty")
    return config


def inside(folder, name, where: str):
    """`folder/name` for a file name read from a record, refused when it points outside `folder`."""
    from pathlib import Path

    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(f"{where} must be a file name, got {name!r}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ConfigError(f"{where} {name!r} points outside {folder}")
    return Path(folder) / name


def field(
    doc: dict, key: str, where: str, *, types=None, low=None, high=None, integer=False, choices=None, optional=False
):
    """`doc[key]` checked for presence, JSON type, numeric range or membership; errors name `where` and the key."""
    if key not in doc or doc[key] is None:
        if optional:
            return None
        raise ConfigError(f"{where} lacks the entry {key!r}")
    value = doc[key]
    if integer or low is not None or high is not None:
        check_number(value, f"{where} entry {key!r}", low, high, integer=integer)
    if types is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{where} entry {key!r} must be {names}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} entry {key!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def inside_tree(folder, name, where: str):
    """`folder/name` for a relative path read from a record, refused when it leaves `folder`."""
    from pathlib import Path

    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(f"{where} must be a relative path, got {name!r}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise ConfigError(f"{where} {name!r} points outside {folder}")
    return Path(folder) / name
