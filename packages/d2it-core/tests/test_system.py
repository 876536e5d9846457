"""System records, building from the registry, and model directories."""

import json

import pytest
import torch

from d2it import system as systems
from d2it.errors import CheckpointError, ConfigError, UnknownComponentError


def record(**kw):
    base = dict(backbone="tiny", sampler=None, schedule=None, image_size=32, num_classes=3)
    base.update(kw)
    return systems.SystemRecord(**base)


def test_record_json_round_trip():
    rec = record(options={"backbone": {"width": 4}}, thresholds=[1, 2.5], latent_scale=0.2)
    data = json.loads(json.dumps(rec.to_dict()))
    assert systems.SystemRecord.from_dict(data) == rec
    with pytest.raises(CheckpointError, match="unknown field 'bogus'"):
        systems.SystemRecord.from_dict({**data, "bogus": 1})


def test_canonical_fills_defaults_and_resolves_aliases(tiny_registry):
    rec = record(backbone="tiny-alias", options={"backbone": {"width": "4"}}).canonical()
    assert rec.backbone == "tiny"
    assert rec.options["backbone"] == {"width": 4, "scale": 1.0, "learn_sigma": False, "tag": None, "dims": [1, 2]}


def test_canonical_rejects_bad_names_and_options(tiny_registry):
    with pytest.raises(UnknownComponentError, match="valid backbones: tiny"):
        record(backbone="huge").canonical()
    with pytest.raises(ConfigError, match="backbone.width expects int"):
        record(options={"backbone": {"width": "x"}}).canonical()
    with pytest.raises(ConfigError, match="slot 'refine'"):
        record(options={"refine": {"depth": 1}}).canonical()


def test_build_passes_latent_geometry(tiny_registry):
    s = systems.build(record())
    assert (s.content.input_size, s.content.in_channels, s.content.num_classes, s.content.grains) == (4, 4, 3, None)
    with pytest.raises(ConfigError, match="not divisible"):
        systems.build(record(image_size=30))


def test_save_load_round_trip(tiny_registry, tmp_path):
    torch.manual_seed(0)
    s = systems.build(record(options={"backbone": {"width": 6}}))
    torch.nn.init.normal_(s.content.out.weight)
    systems.save(s, tmp_path / "m", extra={"note": "x"})
    back = systems.load(tmp_path / "m")
    assert back.record == s.record
    for (k, a), (_, b) in zip(s.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    doc = json.loads((tmp_path / "m" / "d2it.json").read_text())
    assert doc["extra"] == {"note": "x"} and doc["format"] == 1 and "d2it-core" in doc["versions"]


def test_load_reports_missing_and_mismatched(tiny_registry, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        systems.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no d2it.json"):
        systems.load(tmp_path / "empty")
    s = systems.build(record())
    systems.save(s, tmp_path / "m")
    systems.update_record(tmp_path / "m", options={"backbone": {"width": 9}})
    with pytest.raises(CheckpointError, match="'proj.weight' has shape"):
        systems.load(tmp_path / "m")
    (tmp_path / "m" / "content.safetensors").unlink()
    with pytest.raises(CheckpointError, match="content.safetensors does not exist"):
        systems.load(tmp_path / "m")


def test_update_record_keeps_weights(tiny_registry, tmp_path):
    systems.save(systems.build(record()), tmp_path / "m")
    systems.update_record(tmp_path / "m", latent_scale=0.5, thresholds=[3.0])
    rec, _ = systems.read_record(tmp_path / "m")
    assert rec.latent_scale == 0.5 and rec.thresholds == (3.0,)
