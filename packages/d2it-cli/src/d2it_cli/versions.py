"""`d2it --version`: d2it's distributions, torch and the installed plugin distributions, from package metadata only.

Nothing is imported (no torch, no plugin), so it answers as fast as `--help`, and a broken plugin is still listed.
"""

import importlib.metadata as md
import platform

import d2it
from d2it.plugin_api import PLUGIN_API
from d2it.registry import BUILTIN_DISTS, ENTRY_POINT_GROUP, normalize


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def plugin_distributions() -> dict[str, str]:
    """Name -> version of every installed distribution with `d2it` entry points that is not d2it's own."""
    out = {}
    for dist in md.distributions():
        name = normalize(dist.metadata["Name"] or "")
        if name and name not in BUILTIN_DISTS and name not in out:
            if any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
                out[name] = dist.version
    return dict(sorted(out.items()))


def version_report() -> str:
    """The lines `d2it --version` prints: `d2it VERSION (plugin API X.Y)`, then one `  name version` per package."""
    lines = [f"d2it {d2it.__version__} (plugin API {PLUGIN_API})"]
    lines += [f"  {dist} {_version(dist)}" for dist in sorted(BUILTIN_DISTS)]
    lines += [f"  torch {_version('torch')}", f"  python {platform.python_version()}"]
    plugins = plugin_distributions()
    lines.append("plugins:" if plugins else "plugins: none")
    lines += [f"  {name} {version}" for name, version in plugins.items()]
    return "\n".join(lines)
