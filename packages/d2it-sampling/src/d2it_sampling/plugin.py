"""d2it-sampling's built-in components: noise schedules, timestep spacings and samplers."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec

# Factories and configs are "module:attr" references, imported when a component is built: loading
# this plugin and listing its components (`d2it plugins`) import no model code.

SCHEDULES = [
    ComponentSpec(
        "linear",
        "schedule",
        "d2it_sampling.schedules:make_linear",
        "d2it_sampling.schedules:LinearConfig",
        summary="DDPM linear betas 1e-4 .. 0.02 (DiT)",
    ),
    ComponentSpec(
        "cosine",
        "schedule",
        "d2it_sampling.schedules:make_cosine",
        "d2it_sampling.schedules:CosineConfig",
        summary="Improved-DDPM cosine alpha-bar schedule",
    ),
]

SPACINGS = [
    ComponentSpec(
        "uniform",
        "spacing",
        "d2it_sampling.spacings:make_uniform",
        "d2it_sampling.spacings:UniformConfig",
        summary="evenly spaced (DiT respacing)",
    ),
    ComponentSpec(
        "trailing",
        "spacing",
        "d2it_sampling.spacings:make_trailing",
        "d2it_sampling.spacings:TrailingConfig",
        summary="evenly spaced from T-1 down",
    ),
    ComponentSpec(
        "log-snr",
        "spacing",
        "d2it_sampling.spacings:make_log_snr",
        "d2it_sampling.spacings:LogSNRConfig",
        aliases=("lambda",),
        summary="uniform in log-SNR",
    ),
    ComponentSpec(
        "karras",
        "spacing",
        "d2it_sampling.spacings:make_karras",
        "d2it_sampling.spacings:KarrasConfig",
        summary="Karras et al. sigma ramp (rho)",
    ),
]

SAMPLERS = [
    ComponentSpec(
        "ddpm",
        "sampler",
        "d2it_sampling.samplers:DDPMSampler",
        "d2it_sampling.samplers:DDPMConfig",
        summary="ancestral DDPM sampling on respaced steps",
    ),
    ComponentSpec(
        "ddim",
        "sampler",
        "d2it_sampling.samplers:DDIMSampler",
        "d2it_sampling.samplers:DDIMConfig",
        summary="DDIM sampling (eta = 0: deterministic)",
    ),
    ComponentSpec(
        "euler",
        "sampler",
        "d2it_sampling.samplers:EulerSampler",
        "d2it_sampling.samplers:EulerConfig",
        summary="Euler on the probability-flow ODE",
    ),
    ComponentSpec(
        "heun",
        "sampler",
        "d2it_sampling.samplers:HeunSampler",
        "d2it_sampling.samplers:HeunConfig",
        summary="Heun (2nd order) on the PF ODE",
    ),
    ComponentSpec(
        "dpmpp-2m",
        "sampler",
        "d2it_sampling.samplers:DPMPP2MSampler",
        "d2it_sampling.samplers:DPMPP2MConfig",
        summary="DPM-Solver++(2M), few-step default",
    ),
    ComponentSpec(
        "dpmpp-2m-sde",
        "sampler",
        "d2it_sampling.samplers:DPMPP2MSDESampler",
        "d2it_sampling.samplers:DPMPP2MSDEConfig",
        summary="DPM-Solver++(2M) SDE, multi-grained noise",
    ),
]


@hookimpl
def d2it_schedules():
    """The noise schedules: factory(config) -> float64 betas (T,)."""
    return list(SCHEDULES)


@hookimpl
def d2it_spacings():
    """The timestep spacings: factory(config) -> spacing(alphas_cumprod, steps) -> kept steps, ascending."""
    return list(SPACINGS)


@hookimpl
def d2it_samplers():
    """The samplers: factory(config) -> a `d2it_sampling.samplers.Sampler`."""
    return list(SAMPLERS)
