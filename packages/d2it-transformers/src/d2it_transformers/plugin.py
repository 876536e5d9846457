"""d2it-transformers' built-in components: backbones, refiners and grain predictors."""

from d2it.hookspecs import hookimpl

# Each hook imports its module when called, not at the top: loading the plugin (every `d2it` start)
# then imports no model code until a component of that kind is asked for.


@hookimpl
def d2it_backbones():
    """DiT backbones (patch 2 and patch 1)."""
    from d2it_transformers.dit import BACKBONES

    return list(BACKBONES)


@hookimpl
def d2it_refiners():
    """RefineNet variants, each building the Dynamic Content Transformer."""
    from d2it_transformers.content import REFINERS

    return list(REFINERS)


@hookimpl
def d2it_grain_predictors():
    """The Dynamic Grain Transformer and the fixed/random grain predictors."""
    from d2it_transformers.grain import GRAIN_PREDICTORS

    return list(GRAIN_PREDICTORS)
