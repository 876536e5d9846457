"""Component specs with lazy "module:attr" references: resolved on first use, cached, clear errors."""

import sys
import textwrap

import attrs
import pytest

import d2it
from d2it.errors import ConfigError, D2itError
from d2it.testing import registry_with

from conftest import TinyBackbone, TinyConfig

LAZY_MODULE = textwrap.dedent(
    '''
    """A plugin's model module, imported only when its component is built."""
    import attrs

    IMPORTS = []
    IMPORTS.append(1)


    @attrs.frozen
    class LazyConfig:
        width: int = 3


    def make_lazy(config, **context):
        return ("built", config.width, context)


    class Holder:
        make = staticmethod(make_lazy)


    NOT_A_CLASS = 7
    '''
)


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """The name of a fresh module on sys.path, not imported yet (and forgotten again afterwards)."""
    name = f"d2it_lazy_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def plugin_of(*specs):
    class Plugin:
        @d2it.hookimpl
        def d2it_backbones(self):
            return list(specs)

    return Plugin()


def test_listing_imports_nothing_and_building_resolves_once(lazy_module):
    spec = d2it.ComponentSpec("lazy", "backbone", f"{lazy_module}:make_lazy", f"{lazy_module}:LazyConfig", summary="s")
    reg = registry_with(plugin_of(spec))
    assert reg.names("backbone") == ["lazy"] and reg.get("backbone", "lazy").summary == "s"
    assert lazy_module not in sys.modules, "listing a lazy spec imported its module"

    assert reg.create("backbone", "lazy", {"width": "5"}, grains=2) == ("built", 5, {"grains": 2})
    module = sys.modules[lazy_module]
    got = reg.get("backbone", "lazy")
    assert got.factory is module.make_lazy and got.config is module.LazyConfig
    assert got.make_config().width == 3 and module.IMPORTS == [1]
    assert got.factory_ref == f"{lazy_module}:make_lazy" and got.dist == "test-plugin-0"


def test_objects_and_references_mix_and_dotted_attributes_resolve(lazy_module):
    spec = d2it.ComponentSpec("mixed", "backbone", f"{lazy_module}:Holder.make", TinyConfig)
    assert spec.config is TinyConfig and spec.factory is sys.modules[lazy_module].make_lazy
    assert d2it.ComponentSpec("eager", "backbone", TinyBackbone, TinyConfig).factory is TinyBackbone
    # a resolved reference is cached on the spec but is not part of its identity
    assert spec == d2it.ComponentSpec("mixed", "backbone", f"{lazy_module}:Holder.make", TinyConfig)


@pytest.mark.parametrize(
    ("factory", "config", "missing"),
    [
        ("d2it_no_such_module:make", None, "its factory 'd2it_no_such_module:make' does not import"),
        ("{m}:make_gone", None, "its factory '{m}:make_gone' does not import (AttributeError"),
        ("{m}:make_lazy", "{m}:GoneConfig", "its config '{m}:GoneConfig' does not import"),
    ],
)
def test_a_reference_that_does_not_resolve_names_component_and_distribution(lazy_module, factory, config, missing):
    refs = {"factory": factory.format(m=lazy_module)}
    if config:
        refs["config"] = config.format(m=lazy_module)
    reg = registry_with(plugin_of(d2it.ComponentSpec("lazy", "backbone", **refs)))
    assert reg.names("backbone") == ["lazy"]  # listing still works
    with pytest.raises(D2itError) as info:
        reg.create("backbone", "lazy")
    message = str(info.value)
    assert message.startswith("backbone 'lazy' from test-plugin-0 0 cannot be loaded: ")
    assert missing.format(m=lazy_module) in message and message.endswith("reinstall or upgrade test-plugin-0")
    assert "\n" not in message


def test_a_config_reference_must_name_an_attrs_class(lazy_module):
    for ref in (f"{lazy_module}:make_lazy", f"{lazy_module}:NOT_A_CLASS"):
        reg = registry_with(plugin_of(d2it.ComponentSpec("lazy", "backbone", f"{lazy_module}:make_lazy", ref)))
        with pytest.raises(ConfigError, match=rf"^backbone 'lazy' from test-plugin-0 0: its config '{ref}' is not an"):
            reg.get("backbone", "lazy").make_config()
    reg = registry_with(plugin_of(d2it.ComponentSpec("lazy", "backbone", f"{lazy_module}:NOT_A_CLASS")))
    with pytest.raises(ConfigError, match="its factory .* is not callable"):
        reg.create("backbone", "lazy")


def test_a_malformed_reference_is_refused_when_the_spec_is_made():
    for bad in ("no_colon", "pkg.mod:", ":attr", "pkg mod:attr", "pkg.mod:a-b"):
        with pytest.raises(ConfigError, match="must look like 'package.module:attr'"):
            d2it.ComponentSpec("x", "backbone", bad)
    with pytest.raises(ConfigError, match="config reference"):
        d2it.ComponentSpec("x", "backbone", TinyBackbone, "not a reference")


def test_builtin_attention_specs_are_references_to_d2it_attention():
    from d2it.plugin import ATTENTION

    assert all(isinstance(s.factory_ref, str) for s in ATTENTION)
    assert attrs.has(ATTENTION[0].config)
    assert registry_with().create("attention", "math").__name__ == "math_attention"
