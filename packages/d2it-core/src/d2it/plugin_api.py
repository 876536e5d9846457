"""The plugin API's version and the option names d2it itself reads from a component's config.

`PLUGIN_API` is "MAJOR.MINOR": MINOR grows when the API gains something (a hook, a reserved
option, a context argument) and a plugin written for an older MINOR keeps working; MAJOR grows
when something a plugin may rely on changes or goes (CHANGELOG.md then says what and how to move).
A plugin needs MAJOR equal to the one it was written for and MINOR at least as large:

    d2it.require_plugin_api("1.1", plugin="my-plugin")  # in the plugin's entry-point module

Every other option name belongs to the component: no base class, no pipeline code reads it.
"""

import attrs

from d2it.errors import D2itError

PLUGIN_API = "1.1"


@attrs.frozen
class Reserved:
    """One option name d2it reads from a component's config: what it must hold, for which components, since when."""

    kind: str
    option: str
    meaning: str
    since: str = "0.1.0"  # the d2it version that reserved it
    applies: str = "every component of the kind"
    remedy: str = ""  # how a plugin whose own option has this name keeps it


FIRST_API = {"0.1.0": "1.0"}  # d2it version -> the plugin API it shipped (before PLUGIN_API existed)

# kind -> the reserved option names of that kind (docs/components.md lists them from here; a test checks)
RESERVED_OPTIONS = {
    "sampler": (
        Reserved("sampler", "steps", "an int >= 1, the default number of steps (`Sampler.__init__` checks it)"),
        Reserved(
            "sampler",
            "spacing",
            "a registered spacing, `name` or `name:key=value,...`, which the inherited `Sampler.timesteps` uses",
            applies="samplers that inherit `Sampler.timesteps`",
            remedy="a sampler that overrides `timesteps` owns its `spacing` option and may give it any values",
        ),
    ),
    "vae": (
        Reserved(
            "vae",
            "regularizer",
            "a registered regularizer's name; its options reach the factory as `regularizer_options`",
            applies="VAEs whose `regularizer` option is a `str`",
            remedy="give the option another type or name to keep it your own",
        ),
    ),
    "regularizer": (
        Reserved("regularizer", "loss_weight", "a float, the weight of its loss in the stage-1 objective"),
    ),
    "grain_coder": tuple(
        Reserved("grain_coder", name, meaning, applies="grain coders that the DVAE (`dvae-kl`, `dvae-vq`) builds")
        for name, meaning in (
            ("grains", "an int, the number of grains k"),
            ("region", "an int, pixels per side of one region"),
            ("bins", "an int, the entropy score's histogram bins"),
            ("sigma", "a float, the entropy score's smoothing"),
            ("fine_ratio", "a float in [0, 1], the share of fine regions of the default thresholds"),
        )
    ),
    "backbone": (
        Reserved(
            "backbone",
            "learn_sigma",
            "a bool, true when the model also predicts the variance (`make_diffusion` reads it from a bare record)",
            applies="backbones that declare it",
        ),
    ),
    "dataset": (
        Reserved(
            "dataset",
            "strict",
            "a bool, true to refuse bad items instead of skipping them (`--strict-data` sets it)",
            applies="datasets that declare it (`--strict-data` is refused for one that does not)",
        ),
    ),
    "metric": (
        Reserved(
            "metric",
            "layer",
            "a str or None, the feature layer that the inherited `FeatureMetric.layer_for` returns",
            applies="feature metrics that inherit `FeatureMetric.layer_for`",
            remedy="a metric that overrides `layer_for` owns its `layer` option",
        ),
    ),
}


def _parse(version: str) -> tuple[int, int]:
    major, dot, minor = str(version).strip().partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        raise D2itError(f"a plugin API version is MAJOR.MINOR (e.g. {PLUGIN_API!r}), got {version!r}")
    return int(major), int(minor)


def supports(required: str) -> bool:
    """True when this d2it serves a plugin written for plugin API `required` (same MAJOR, MINOR at least it)."""
    want, have = _parse(required), _parse(PLUGIN_API)
    return want[0] == have[0] and want[1] <= have[1]


def require_plugin_api(required: str, plugin: str = "this plugin"):
    """Raise a D2itError naming both versions unless this d2it serves plugin API `required`."""
    if not supports(required):
        raise D2itError(
            f"{plugin} is written for d2it plugin API {required} and this d2it provides {PLUGIN_API} "
            f"(d2it's CHANGELOG.md lists every change); install a d2it whose plugin API is "
            f"{_parse(required)[0]}.x, at least {required}"
        )


def reserved_error(kind: str, option: str, problem: str) -> str:
    """The sentence for an option that collides with a reserved name: the name, the d2it version, the way out."""
    entry = next(r for r in RESERVED_OPTIONS[kind] if r.option == option)
    api = FIRST_API.get(entry.since)
    since = f"d2it {entry.since}" + (f" (plugin API {api})" if api else "")
    text = f"{problem}; `{option}` is a reserved {kind.replace('_', ' ')} option since {since}: {entry.meaning}"
    return text + (f"; {entry.remedy}" if entry.remedy else "")
