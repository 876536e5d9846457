"""The example plugin's own tests: d2it's conformance suites on each of its components (three lines each)."""

from d2it.testing.backbone import BackboneConformance
from d2it.testing.regularizer import RegularizerConformance
from d2it.testing.sampler import SamplerConformance


class TestBackbone(BackboneConformance):
    name = "example-tiny"
    overrides = {"width": 8}


class TestSampler(SamplerConformance):
    name = "example-trapezoid"


class TestSamplerOnKarrasSteps(SamplerConformance):
    name = "example-trapezoid"
    overrides = {"spacing": "karras"}


class TestRegularizer(RegularizerConformance):
    name = "example-sign"
