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


def test_a_vae_regularizer_that_names_no_regularizer_cites_the_reserved_option():
    from d2it.system import SystemRecord

    record = SystemRecord(backbone="dit-s", vae="dvae-kl", options={"vae": {"regularizer": "l2"}})
    with pytest.raises(d2it.UnknownComponentError) as info:
        record.canonical()
    message = str(info.value)
    assert message.startswith("vae 'dvae-kl': unknown regularizer 'l2'; valid regularizers: fsq, kl, vq")
    assert "`regularizer` is a reserved vae option since d2it 0.1.0 (plugin API 1.0)" in message
