"""d2it-sampling's built-in components: noise schedules, timestep spacings and samplers."""

from d2it.hookspecs import hookimpl

# Each hook imports its module when called, not at the top: loading the plugin (every `d2it` start)
# then imports no model code until a component of that kind is asked for.


@hookimpl
def d2it_schedules():
    """The noise schedules: factory(config) -> float64 betas (T,)."""
    from d2it_sampling.schedules import SCHEDULES

    return list(SCHEDULES)


@hookimpl
def d2it_spacings():
    """The timestep spacings: factory(config) -> spacing(alphas_cumprod, steps) -> kept steps, ascending."""
    from d2it_sampling.spacings import SPACINGS

    return list(SPACINGS)


@hookimpl
def d2it_samplers():
    """The samplers: factory(config) -> a `d2it_sampling.samplers.Sampler`."""
    from d2it_sampling.samplers import SAMPLERS

    return list(SAMPLERS)
