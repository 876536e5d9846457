"""Every built-in sampler passes d2it's sampler conformance suite (with its default and other spacings)."""

from d2it.testing.sampler import SamplerConformance


class TestDDPM(SamplerConformance):
    name = "ddpm"


class TestDDIM(SamplerConformance):
    name = "ddim"


class TestDDIMStochastic(SamplerConformance):
    name = "ddim"
    overrides = {"eta": 1.0}


class TestEuler(SamplerConformance):
    name = "euler"


class TestHeun(SamplerConformance):
    name = "heun"


class TestDPMPP2M(SamplerConformance):
    name = "dpmpp-2m"


class TestDPMPP2MUniform(SamplerConformance):
    name = "dpmpp-2m"
    overrides = {"spacing": "uniform"}


class TestDPMPP2MSDE(SamplerConformance):
    name = "dpmpp-2m-sde"


class TestDPMPP2MSDEAsODE(SamplerConformance):
    name = "dpmpp-2m-sde"
    overrides = {"eta": 0.0, "spacing": "karras:rho=5"}
