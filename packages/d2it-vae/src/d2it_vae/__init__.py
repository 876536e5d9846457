"""d2it_vae: D²iT stage 1 — the Dynamic VAE, the entropy grain coder, KL/VQ regularizers and the VAE losses."""

from d2it_vae.dvae import DVAEConfig, DVAEVQConfig, DynamicVAE, VAEF8Config, VAEOutput, make_dvae, make_vae_f8
from d2it_vae.entropy import EntropyCoder, fit_thresholds, grains_from_scores, grayscale, region_entropy
from d2it_vae.losses import NLayerDiscriminator, VAELoss, hinge_d_loss, make_lpips
from d2it_vae.regularizers import DiagonalGaussian, EMAVectorQuantizer

__all__ = [
    "DVAEConfig",
    "DVAEVQConfig",
    "DiagonalGaussian",
    "DynamicVAE",
    "EMAVectorQuantizer",
    "EntropyCoder",
    "NLayerDiscriminator",
    "VAEF8Config",
    "VAELoss",
    "VAEOutput",
    "fit_thresholds",
    "grains_from_scores",
    "grayscale",
    "hinge_d_loss",
    "make_dvae",
    "make_lpips",
    "make_vae_f8",
    "region_entropy",
]
