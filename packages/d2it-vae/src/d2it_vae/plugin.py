"""d2it-vae's built-in components: the VAEs, the regularizers and the entropy grain coder."""

from d2it.hookspecs import hookimpl

# Each hook imports its module when called, not at the top: loading the plugin (every `d2it` start)
# then imports no model code until a component of that kind is asked for.


@hookimpl
def d2it_vaes():
    """The Dynamic VAEs and the fixed-grain baseline."""
    from d2it_vae.dvae import VAES

    return list(VAES)


@hookimpl
def d2it_regularizers():
    """The latent regularizers."""
    from d2it_vae.regularizers import REGULARIZERS

    return list(REGULARIZERS)


@hookimpl
def d2it_grain_coders():
    """The grain coders."""
    from d2it_vae.entropy import GRAIN_CODERS

    return list(GRAIN_CODERS)
