"""d2it_sampling: schedules, multi-grained Gaussian diffusion, samplers, spacings, guidance and generation."""

import importlib

# name -> module: imported on first use, so importing the package (as loading its plugin does)
# imports no model code
_EXPORTS = {
    "DDIMSampler": "d2it_sampling.samplers",
    "DDPMSampler": "d2it_sampling.samplers",
    "GaussianDiffusion": "d2it_sampling.diffusion",
    "Generation": "d2it_sampling.pipeline",
    "Pipeline": "d2it_sampling.images",
    "Sampler": "d2it_sampling.samplers",
    "conditioned_model": "d2it_sampling.guidance",
    "cosine_betas": "d2it_sampling.schedules",
    "gaussian_noise": "d2it_sampling.diffusion",
    "generate": "d2it_sampling.pipeline",
    "linear_betas": "d2it_sampling.schedules",
    "make_diffusion": "d2it_sampling.pipeline",
    "sample_ddim": "d2it_sampling.samplers",
    "sample_ddpm": "d2it_sampling.samplers",
    "space_timesteps": "d2it_sampling.diffusion",
    "to_uint8": "d2it_sampling.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
