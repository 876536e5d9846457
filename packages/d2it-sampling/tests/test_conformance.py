"""Both built-in samplers pass d2it's sampler conformance suite."""

from d2it.testing.sampler import SamplerConformance


class TestDDPM(SamplerConformance):
    name = "ddpm"


class TestDDIM(SamplerConformance):
    name = "ddim"


class TestDDIMStochastic(SamplerConformance):
    name = "ddim"
    overrides = {"eta": 1.0}
