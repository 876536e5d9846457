"""d2it-vae's built-in components: the VAEs, the regularizers and the entropy grain coder."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec

# Factories and configs are "module:attr" references, imported when a component is built: loading
# this plugin and listing its components (`d2it plugins`) import no model code.

VAES = [
    ComponentSpec(
        "dvae-kl",
        "vae",
        "d2it_vae.dvae:make_dvae",
        "d2it_vae.dvae:DVAEConfig",
        summary="Dynamic VAE, F=8/16, KL posterior (D²iT stage 1)",
    ),
    ComponentSpec(
        "dvae-vq",
        "vae",
        "d2it_vae.dvae:make_dvae",
        "d2it_vae.dvae:DVAEVQConfig",
        summary="Dynamic VAE, F=8/16, EMA vector quantizer",
    ),
    ComponentSpec(
        "vae-f8",
        "vae",
        "d2it_vae.dvae:make_vae_f8",
        "d2it_vae.dvae:VAEF8Config",
        summary="LDM KL-f8 autoencoder, one grain",
    ),
]

REGULARIZERS = [
    ComponentSpec(
        "kl",
        "regularizer",
        "d2it_vae.regularizers:make_kl",
        "d2it_vae.regularizers:KLConfig",
        summary="diagonal Gaussian posterior, KL to N(0, I)",
    ),
    ComponentSpec(
        "vq",
        "regularizer",
        "d2it_vae.regularizers:make_vq",
        "d2it_vae.regularizers:VQConfig",
        summary="vector quantizer, EMA codebook, straight-through",
    ),
    ComponentSpec(
        "fsq",
        "regularizer",
        "d2it_vae.regularizers:make_fsq",
        "d2it_vae.regularizers:FSQConfig",
        summary="finite scalar quantization, straight-through",
    ),
]

GRAIN_CODERS = [
    ComponentSpec(
        "entropy",
        "grain_coder",
        "d2it_vae.entropy:make_entropy_coder",
        "d2it_vae.entropy:EntropyConfig",
        summary="Shannon entropy of regions",
    ),
]


@hookimpl
def d2it_vaes():
    """The Dynamic VAEs and the fixed-grain baseline."""
    return list(VAES)


@hookimpl
def d2it_regularizers():
    """The latent regularizers."""
    return list(REGULARIZERS)


@hookimpl
def d2it_grain_coders():
    """The grain coders."""
    return list(GRAIN_CODERS)
