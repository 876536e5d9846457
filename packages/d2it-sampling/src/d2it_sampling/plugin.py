"""d2it-sampling's built-in components: noise schedules (`linear`, `cosine`) and samplers (`ddpm`, `ddim`)."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec
from d2it_sampling.samplers import DDIMConfig, DDIMSampler, DDPMConfig, DDPMSampler
from d2it_sampling.schedules import CosineConfig, LinearConfig, make_cosine, make_linear


@hookimpl
def d2it_schedules():
    """The noise schedules: factory(config) -> float64 betas (T,)."""
    return [
        ComponentSpec("linear", "schedule", make_linear, LinearConfig, summary="DDPM linear betas 1e-4 .. 0.02 (DiT)"),
        ComponentSpec(
            "cosine", "schedule", make_cosine, CosineConfig, summary="Improved-DDPM cosine alpha-bar schedule"
        ),
    ]


@hookimpl
def d2it_samplers():
    """The samplers: factory(config) -> a `d2it_sampling.samplers.Sampler`."""
    return [
        ComponentSpec("ddpm", "sampler", DDPMSampler, DDPMConfig, summary="ancestral DDPM sampling on respaced steps"),
        ComponentSpec("ddim", "sampler", DDIMSampler, DDIMConfig, summary="DDIM sampling (eta = 0: deterministic)"),
    ]
