"""d2it-cli reads a plugin component's option only where it is reserved: a dataset's `strict`, a metric's `layer`."""

import attrs
import pytest

import d2it
from d2it.errors import ConfigError, DataError
from d2it.testing import registry_with
from d2it_cli.data import data_options
from d2it_cli.evaluation.metrics import FeatureMetric


@attrs.frozen
class LaxConfig:
    size: int = 4


@attrs.frozen
class ModeConfig:
    strict: str = "warn"  # the plugin's own `strict`, not a bool


class Datasets:
    @d2it.hookimpl
    def d2it_datasets(self):
        return [
            d2it.ComponentSpec("lax", "dataset", lambda c, **kw: [], LaxConfig),
            d2it.ComponentSpec("mode", "dataset", lambda c, **kw: [], ModeConfig),
        ]


@pytest.mark.parametrize("name", ["lax", "mode"])
def test_strict_data_on_a_dataset_without_a_bool_strict_is_one_sentence(name):
    registry = registry_with(Datasets())
    assert data_options(f"{name}:root", False, ["size=8"], registry) == {"size": 8}
    with pytest.raises(DataError) as info:
        data_options(f"{name}:root", True, (), registry)
    message = str(info.value)
    assert message.startswith(f"--strict-data: dataset {name!r} has no bool option `strict`")
    assert "`strict` is a reserved dataset option since d2it 0.1.0" in message


def test_strict_data_sets_strict_on_a_dataset_that_declares_it(tmp_path):
    assert data_options(str(tmp_path), True) == {"strict": True}


class Inception:
    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "2048"


@attrs.frozen
class LayerConfig:
    layer: int = 3  # the plugin's own `layer`: a block index


class InheritsLayerFor(FeatureMetric):
    def __call__(self, gen, ref, layer, seed):
        return {}


class OwnsLayer(InheritsLayerFor):
    def layer_for(self, extractor_cls):
        return "logits_unbiased"


def test_a_metric_that_overrides_layer_for_owns_its_layer_option():
    assert OwnsLayer(LayerConfig()).layer_for(Inception) == "logits_unbiased"
    assert InheritsLayerFor(attrs.make_class("C", {}, frozen=True)()).layer_for(Inception) == "2048"
    with pytest.raises(ConfigError, match=r"layer 3 is not a feature layer name; `layer` is a reserved metric option"):
        InheritsLayerFor(LayerConfig()).layer_for(Inception)
