"""The plugin API: its version, the reserved option names, and options a plugin owns."""

import re
from pathlib import Path

import attrs
import pytest

import d2it
from d2it.config import build_config
from d2it.errors import ConfigError, D2itError
from d2it.plugin_api import RESERVED_OPTIONS, reserved_error, supports

COMPONENTS_DOC = Path(__file__).resolve().parents[3] / "docs" / "components.md"


def test_plugin_api_is_major_minor_and_served_by_same_major_and_no_larger_minor():
    major, minor = map(int, re.fullmatch(r"(\d+)\.(\d+)", d2it.PLUGIN_API).groups())
    assert supports(f"{major}.0") and supports(d2it.PLUGIN_API)
    assert not supports(f"{major}.{minor + 1}") and not supports(f"{major + 1}.0")
    if major > 0:
        assert not supports(f"{major - 1}.{minor}")
    d2it.require_plugin_api(f"{major}.0", plugin="old-plugin")
    with pytest.raises(D2itError, match=rf"new-plugin is written for d2it plugin API {major + 1}\.0 and this d2it"):
        d2it.require_plugin_api(f"{major + 1}.0", plugin="new-plugin")
    with pytest.raises(D2itError, match="MAJOR.MINOR"):
        d2it.require_plugin_api("one")


def test_reserved_error_names_the_option_and_the_version():
    message = reserved_error("sampler", "spacing", "sampler my-sampler: unknown spacing 'logsnr'")
    assert message.startswith("sampler my-sampler: unknown spacing 'logsnr'; `spacing` is a reserved sampler option")
    assert "since d2it 0.1.0 (plugin API 1.0)" in message and "overrides `timesteps`" in message


def test_components_doc_lists_every_reserved_option():
    doc = COMPONENTS_DOC.read_text()
    section = doc[doc.index("## Plugin API version and reserved option names") :]
    for kind, entries in RESERVED_OPTIONS.items():
        for entry in entries:
            row = f"| `{kind}` | `{entry.option}` |"
            assert row in section, f"docs/components.md does not list the reserved {kind} option {entry.option!r}"
    assert f"`d2it.PLUGIN_API` (now `{d2it.PLUGIN_API}`)" in doc


@attrs.frozen
class PluginConfig:
    """A plugin's options whose names d2it's own components also use, with the plugin's own ranges."""

    ratio: float = 2.0  # d2it's `ratio` is in [0, 1]
    steps: int = 0  # d2it's `steps` is >= 1
    block_sizes: tuple[int, ...] = (0, 4)  # d2it's `*_sizes` are counts >= 1
    eta: float = -1.0


def test_a_plugin_option_named_like_a_d2it_option_keeps_its_own_range():
    assert build_config(PluginConfig, {"ratio": "3.5"}) == PluginConfig(ratio=3.5)
    with pytest.raises(ConfigError, match="must be a finite number"):  # not a name rule: every float option
        build_config(PluginConfig, {"eta": "inf"})


def test_d2it_own_configs_keep_the_shared_ranges():
    from d2it.system import GuidanceConfig

    own = attrs.make_class("OwnConfig", {"ratio": attrs.field(default=0.5, type=float)}, frozen=True)
    own.__module__ = GuidanceConfig.__module__  # a config defined in a d2it package
    with pytest.raises(ConfigError, match=r"ratio must be"):
        build_config(own, {"ratio": 3.5})
