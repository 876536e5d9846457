"""d2it-vae's built-in components: the VAEs, the regularizers and the entropy grain coder."""

import d2it
from d2it import ComponentSpec
from d2it_vae.dvae import DVAEConfig, DVAEVQConfig, VAEF8Config, make_dvae, make_vae_f8
from d2it_vae.entropy import EntropyConfig, make_entropy_coder
from d2it_vae.regularizers import KLConfig, VQConfig, make_kl, make_vq


@d2it.hookimpl
def d2it_vaes():
    """The Dynamic VAEs and the fixed-grain baseline."""
    return [
        ComponentSpec(
            "dvae-kl", "vae", make_dvae, DVAEConfig, summary="Dynamic VAE, F=8/16, KL posterior (D²iT stage 1)"
        ),
        ComponentSpec("dvae-vq", "vae", make_dvae, DVAEVQConfig, summary="Dynamic VAE, F=8/16, EMA vector quantizer"),
        ComponentSpec("vae-f8", "vae", make_vae_f8, VAEF8Config, summary="LDM KL-f8 autoencoder, one grain"),
    ]


@d2it.hookimpl
def d2it_regularizers():
    """The latent regularizers."""
    return [
        ComponentSpec("kl", "regularizer", make_kl, KLConfig, summary="diagonal Gaussian posterior, KL to N(0, I)"),
        ComponentSpec(
            "vq", "regularizer", make_vq, VQConfig, summary="vector quantizer, EMA codebook, straight-through"
        ),
    ]


@d2it.hookimpl
def d2it_grain_coders():
    """The grain coders."""
    return [
        ComponentSpec(
            "entropy", "grain_coder", make_entropy_coder, EntropyConfig, summary="Shannon entropy of regions"
        ),
    ]
