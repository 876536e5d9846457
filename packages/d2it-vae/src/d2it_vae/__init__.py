"""d2it_vae: D²iT stage 1 — the Dynamic VAE, the entropy grain coder, KL/VQ/FSQ regularizers and the VAE losses."""

import importlib

# name -> module: imported on first use, so importing the package (as loading its plugin does)
# imports no model code
_EXPORTS = {
    "DVAEConfig": "d2it_vae.dvae",
    "DVAEVQConfig": "d2it_vae.dvae",
    "DiagonalGaussian": "d2it_vae.regularizers",
    "DynamicVAE": "d2it_vae.dvae",
    "EMAVectorQuantizer": "d2it_vae.regularizers",
    "EntropyCoder": "d2it_vae.entropy",
    "NLayerDiscriminator": "d2it_vae.losses",
    "VAEF8Config": "d2it_vae.dvae",
    "VAELoss": "d2it_vae.losses",
    "VAEOutput": "d2it_vae.dvae",
    "fit_thresholds": "d2it_vae.entropy",
    "grains_from_scores": "d2it_vae.entropy",
    "grayscale": "d2it_vae.entropy",
    "hinge_d_loss": "d2it_vae.losses",
    "make_dvae": "d2it_vae.dvae",
    "make_lpips": "d2it_vae.losses",
    "make_vae_f8": "d2it_vae.dvae",
    "region_entropy": "d2it_vae.entropy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
