"""The example plugin's own tests (FROZEN as of d2it 0.1.0, plus the strided sampler's): d2it's conformance suites."""

from d2it.testing.backbone import BackboneConformance
from d2it.testing.regularizer import RegularizerConformance
from d2it.testing.sampler import SamplerConformance


class TestBackbone(BackboneConformance):
    name = "frozen-tiny"
    overrides = {"width": 8}


class TestSampler(SamplerConformance):
    name = "frozen-trapezoid"


class TestSamplerOnKarrasSteps(SamplerConformance):
    name = "frozen-trapezoid"
    overrides = {"spacing": "karras"}


class TestRegularizer(RegularizerConformance):
    name = "frozen-sign"


# -- the sampler whose `spacing` is its own option ("uniform" or "logsnr", not d2it's registered spacings) --
class TestStridedSamplerUniform(SamplerConformance):
    name = "frozen-strided"
    overrides = {"spacing": "uniform"}


class TestStridedSamplerLogSNR(SamplerConformance):
    name = "frozen-strided"
    overrides = {"spacing": "logsnr"}


def test_strided_sampler_keeps_its_own_spacing_values():
    from d2it_frozen_plugin_v0_1.components import strided_steps

    import d2it
    from d2it.testing.sampler import linear_betas
    from d2it_sampling import GaussianDiffusion

    diffusion = GaussianDiffusion(linear_betas())
    for spacing in ("uniform", "logsnr"):
        sampler = d2it.create("sampler", "frozen-strided", {"spacing": spacing, "steps": 10})
        assert sampler.spacing == spacing
        assert sampler.timesteps(diffusion) == strided_steps(diffusion.alphas_cumprod, 10, spacing)
    assert d2it.create("sampler", "frozen-strided", {"spacing": "uniform", "steps": 4}).timesteps(diffusion) == [
        0, 333, 666, 999
    ]  # fmt: skip
