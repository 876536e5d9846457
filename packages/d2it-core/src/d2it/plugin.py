"""d2it-core's built-in components: the attention backends (the table `ATTENTION` in `d2it.attention`)."""

from d2it.hookspecs import hookimpl

# Each hook imports its module when called, not at the top: loading the plugin (every `d2it` start)
# then imports no model code until a component of that kind is asked for.


@hookimpl
def d2it_attention():
    """The attention backends."""
    from d2it.attention import ATTENTION

    return list(ATTENTION)
