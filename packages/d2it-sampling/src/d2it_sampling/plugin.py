"""d2it-sampling's built-in components: noise schedules, timestep spacings and samplers."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec
from d2it_sampling import samplers as s
from d2it_sampling import spacings as sp
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
def d2it_spacings():
    """The timestep spacings: factory(config) -> spacing(alphas_cumprod, steps) -> kept steps, ascending."""
    return [
        ComponentSpec("uniform", "spacing", sp.make_uniform, sp.UniformConfig, summary="evenly spaced (DiT respacing)"),
        ComponentSpec(
            "trailing", "spacing", sp.make_trailing, sp.TrailingConfig, summary="evenly spaced from T-1 down"
        ),
        ComponentSpec(
            "log-snr", "spacing", sp.make_log_snr, sp.LogSNRConfig, aliases=("lambda",), summary="uniform in log-SNR"
        ),
        ComponentSpec("karras", "spacing", sp.make_karras, sp.KarrasConfig, summary="Karras et al. sigma ramp (rho)"),
    ]


@hookimpl
def d2it_samplers():
    """The samplers: factory(config) -> a `d2it_sampling.samplers.Sampler`."""
    return [
        ComponentSpec(
            "ddpm", "sampler", s.DDPMSampler, s.DDPMConfig, summary="ancestral DDPM sampling on respaced steps"
        ),
        ComponentSpec("ddim", "sampler", s.DDIMSampler, s.DDIMConfig, summary="DDIM sampling (eta = 0: deterministic)"),
        ComponentSpec("euler", "sampler", s.EulerSampler, s.EulerConfig, summary="Euler on the probability-flow ODE"),
        ComponentSpec("heun", "sampler", s.HeunSampler, s.HeunConfig, summary="Heun (2nd order) on the PF ODE"),
        ComponentSpec(
            "dpmpp-2m", "sampler", s.DPMPP2MSampler, s.DPMPP2MConfig, summary="DPM-Solver++(2M), few-step default"
        ),
        ComponentSpec(
            "dpmpp-2m-sde",
            "sampler",
            s.DPMPP2MSDESampler,
            s.DPMPP2MSDEConfig,
            summary="DPM-Solver++(2M) SDE, multi-grained noise",
        ),
    ]
