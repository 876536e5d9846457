"""The plugin registers every stage-1 component with a loadable config."""

import pytest

import d2it
from d2it.config import build_config, config_to_dict


@pytest.mark.parametrize(
    ("kind", "names"),
    [("vae", ["dvae-kl", "dvae-vq", "vae-f8"]), ("regularizer", ["fsq", "kl", "vq"]), ("grain_coder", ["entropy"])],
)
def test_components_registered_by_d2it_vae(fresh_registry, kind, names):
    assert set(names) <= set(fresh_registry.names(kind))
    for name in names:
        spec = fresh_registry.get(kind, name)
        assert spec.dist == "d2it-vae" and spec.summary
        config = spec.make_config()
        assert build_config(spec.config, config_to_dict(config)) == config


def test_bad_option_names_the_option():
    with pytest.raises(d2it.ConfigError, match="codebook_size"):
        d2it.create("vae", "dvae-vq", {}, image_size=32, regularizer_options={"codebook_size": "many"})
