"""Typed options: defaults, string overrides, errors and JSON round trips."""

import pytest

from d2it.config import build_config, config_options, config_to_dict, parse_sets
from d2it.errors import ConfigError

from conftest import TinyConfig


def test_defaults_and_string_overrides():
    cfg = build_config(
        TinyConfig, {"width": "16", "scale": "0.5", "learn_sigma": "true", "tag": "none", "dims": "3,4,5"}
    )
    assert cfg == TinyConfig(width=16, scale=0.5, learn_sigma=True, tag=None, dims=(3, 4, 5))


def test_json_values_round_trip():
    cfg = TinyConfig(width=4, scale=2.0, tag="x", dims=(7,))
    data = config_to_dict(cfg)
    assert data == {"width": 4, "scale": 2.0, "learn_sigma": False, "tag": "x", "dims": [7]}
    assert build_config(TinyConfig, data) == cfg


def test_int_given_for_float_is_accepted_but_bool_for_int_is_not():
    assert build_config(TinyConfig, {"scale": 2}).scale == 2.0
    with pytest.raises(ConfigError, match="backbone.width expects int, got True"):
        build_config(TinyConfig, {"width": True}, where="backbone")


def test_bad_value_names_option_and_type():
    with pytest.raises(ConfigError) as info:
        build_config(TinyConfig, {"width": "abc"}, where="backbone")
    assert str(info.value) == "backbone.width expects int, got 'abc'"
    with pytest.raises(ConfigError, match="expects str or none"):
        build_config(TinyConfig, {"tag": 3})


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_config(TinyConfig, {"depht": "3"}, where="backbone")
    assert str(info.value) == "backbone has no option 'depht'; valid options: dims, learn_sigma, scale, tag, width"


def test_parse_sets():
    assert parse_sets(["backbone.depth=4", "refine.window=8", "backbone.tag=a=b"]) == {
        "backbone": {"depth": "4", "tag": "a=b"},
        "refine": {"window": "8"},
    }
    for bad in ["depth=4", "backbone.depth", ".x=1"]:
        with pytest.raises(ConfigError, match="slot.option=value"):
            parse_sets([bad])


def test_config_options_lists_types_and_defaults():
    assert ("width", "int", 8) in config_options(TinyConfig)
    assert ("tag", "str or none", None) in config_options(TinyConfig)
