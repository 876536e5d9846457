"""d2it_sampling: schedules, multi-grained Gaussian diffusion, DDPM/DDIM samplers, guidance and generation."""

from d2it_sampling.diffusion import GaussianDiffusion, gaussian_noise, space_timesteps
from d2it_sampling.guidance import conditioned_model
from d2it_sampling.pipeline import Generation, generate, make_diffusion
from d2it_sampling.samplers import DDIMSampler, DDPMSampler, Sampler, sample_ddim, sample_ddpm
from d2it_sampling.schedules import cosine_betas, linear_betas

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "Generation",
    "Sampler",
    "conditioned_model",
    "cosine_betas",
    "gaussian_noise",
    "generate",
    "linear_betas",
    "make_diffusion",
    "sample_ddim",
    "sample_ddpm",
    "space_timesteps",
]
