"""The plugin registry: look-ups, errors, provenance and entry-point loading."""

import importlib.metadata as md
import types
import warnings

import pytest

import d2it
from d2it.errors import D2itError, DuplicateComponentError, PluginWarning, UnknownComponentError
from d2it.registry import Registry
from d2it.testing import registry_with

from conftest import TinyBackbone, TinyConfig, TinyPlugin


def test_names_are_sorted_and_include_builtins(tiny_registry):
    assert d2it.names("attention") == ["auto", "math", "sdpa", "xformers"]
    assert d2it.names("backbone") == ["tiny"]


def test_get_by_alias_and_provenance(tiny_registry):
    spec = d2it.get("backbone", "tiny-alias")
    assert spec.name == "tiny" and spec.dist == "test-plugin-0" and spec.version == "0"
    assert d2it.get("attention", "sdpa").dist == "d2it-core"


def test_unknown_name_lists_valid_names(tiny_registry):
    with pytest.raises(UnknownComponentError) as info:
        d2it.get("attention", "flash9")
    assert str(info.value) == "unknown attention 'flash9'; valid attentions: auto, math, sdpa, xformers"


def test_unknown_kind_is_an_error(tiny_registry):
    with pytest.raises(D2itError, match="unknown component kind"):
        tiny_registry.names("widget")


def test_create_applies_overrides_and_context(tiny_registry):
    model = d2it.create(
        "backbone", "tiny", {"width": "5"}, input_size=4, in_channels=3, num_classes=2, grains=None, attention=None
    )
    assert isinstance(model, TinyBackbone) and model.proj.out_channels == 5


def test_create_accepts_a_config_instance(tiny_registry):
    model = d2it.create(
        "backbone", "tiny", TinyConfig(width=3), input_size=4, in_channels=3, num_classes=2, grains=None, attention=None
    )
    assert model.proj.out_channels == 3


def test_duplicate_names_name_both_distributions():
    reg = registry_with(TinyPlugin(), TinyPlugin())
    with pytest.raises(DuplicateComponentError) as info:
        reg.names("backbone")
    message = str(info.value)
    assert "test-plugin-0 0" in message and "test-plugin-1 0" in message and "'tiny'" in message


def test_alias_clashing_with_a_name_is_a_duplicate():
    class Clash:
        @d2it.hookimpl
        def d2it_backbones(self):
            return [d2it.ComponentSpec("tiny-alias", "backbone", TinyBackbone, TinyConfig)]

    with pytest.raises(DuplicateComponentError):
        registry_with(TinyPlugin(), Clash()).get("backbone", "tiny")


def test_wrong_kind_spec_is_rejected():
    class Wrong:
        @d2it.hookimpl
        def d2it_backbones(self):
            return [d2it.ComponentSpec("x", "sampler", TinyBackbone)]

    with pytest.raises(D2itError, match="non-backbone spec"):
        registry_with(Wrong()).names("backbone")


def test_failing_hook_warns_and_keeps_the_rest():
    class Broken:
        @d2it.hookimpl
        def d2it_backbones(self):
            raise RuntimeError("boom")

    reg = registry_with(TinyPlugin(), Broken())
    with pytest.warns(PluginWarning, match="test-plugin-1 0 failed to load"):
        assert reg.names("backbone") == ["tiny"]


def test_spec_validates_names_and_config():
    with pytest.raises(ValueError, match="lowercase"):
        d2it.ComponentSpec("Big", "backbone", TinyBackbone, TinyConfig)
    with pytest.raises(D2itError, match="attrs class"):
        d2it.ComponentSpec("ok", "backbone", TinyBackbone, dict)


# -- entry-point loading with fake distributions ------------------------------------------


class FakeDist:
    """Just enough of importlib.metadata.Distribution for the registry."""

    def __init__(self, name, version, target):
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [md.EntryPoint(name=name, value=target, group="d2it")]


def _fake_world(monkeypatch, dists, modules):
    for mod_name, mod in modules.items():
        monkeypatch.setitem(__import__("sys").modules, mod_name, mod)
    monkeypatch.setattr(md, "distributions", lambda: list(dists))


def _module_with(plugin_cls, name):
    mod = types.ModuleType(name)
    inst = plugin_cls()
    mod.d2it_backbones = d2it.hookimpl(lambda: inst.d2it_backbones())
    return mod


def test_entry_points_load_dedupe_and_attribute(monkeypatch):
    mod = _module_with(TinyPlugin, "fake_tiny_plugin")
    dists = [FakeDist("Tiny_Plugin", "1.2", "fake_tiny_plugin"), FakeDist("tiny-plugin", "9.9", "fake_tiny_plugin")]
    _fake_world(monkeypatch, dists, {"fake_tiny_plugin": mod})
    reg = Registry.from_entry_points()
    spec = reg.get("backbone", "tiny")
    assert (spec.dist, spec.version) == ("tiny-plugin", "1.2")  # the second copy was skipped, not a duplicate


def test_import_failure_is_one_warning(monkeypatch):
    mod = _module_with(TinyPlugin, "fake_tiny_plugin")
    dists = [FakeDist("tiny-plugin", "1.2", "fake_tiny_plugin"), FakeDist("broken-plugin", "0.3", "no_such_module_xyz")]
    _fake_world(monkeypatch, dists, {"fake_tiny_plugin": mod})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = Registry.from_entry_points()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1 and "broken-plugin 0.3 failed to load" in messages[0]
    assert reg.names("backbone") == ["tiny"] and reg.failed == ["broken-plugin"]


def test_disable_env_and_builtins_only(monkeypatch):
    mod = _module_with(TinyPlugin, "fake_tiny_plugin")
    _fake_world(monkeypatch, [FakeDist("tiny-plugin", "1.2", "fake_tiny_plugin")], {"fake_tiny_plugin": mod})
    assert Registry.from_entry_points(builtins_only=True).names("backbone") == []
    monkeypatch.setenv("D2IT_DISABLE_PLUGINS", "other, Tiny_Plugin")
    assert Registry.from_entry_points().names("backbone") == []
    monkeypatch.delenv("D2IT_DISABLE_PLUGINS")
    assert Registry.from_entry_points(disabled=["tiny-plugin"]).names("backbone") == []
    assert Registry.from_entry_points().names("backbone") == ["tiny"]


def test_misspelt_hook_fails_loudly(monkeypatch):
    mod = types.ModuleType("fake_typo_plugin")
    mod.d2it_backbonez = d2it.hookimpl(lambda: [])
    _fake_world(monkeypatch, [FakeDist("typo-plugin", "1.0", "fake_typo_plugin")], {"fake_typo_plugin": mod})
    with pytest.raises(D2itError, match="d2it_backbonez"):
        Registry.from_entry_points()


def test_fixtures_give_isolated_registries(empty_registry):
    assert d2it.default_registry() is empty_registry
    assert empty_registry.names("attention") == []
