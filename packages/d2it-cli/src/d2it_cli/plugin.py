"""d2it-cli's contributions to the registry: its commands, datasets and metrics."""

from d2it.hookspecs import hookimpl

# Each hook imports its module when called, not at the top: loading the plugin (every `d2it` start)
# then imports no model code until a component of that kind is asked for.


@hookimpl
def d2it_commands(cli):
    """Add the built-in commands: lazily where the group supports it (`d2it --help` then imports none of them)."""
    from d2it_cli.commands import LAZY_COMMANDS, load_command

    for name, (path, short_help) in LAZY_COMMANDS.items():
        if hasattr(cli, "add_lazy_command"):
            cli.add_lazy_command(name, path, short_help)
        else:
            cli.add_command(load_command(name), name)


@hookimpl
def d2it_datasets():
    """The built-in datasets."""
    from d2it_cli.data import DATASETS

    return list(DATASETS)


@hookimpl
def d2it_metrics():
    """The built-in evaluation metrics."""
    from d2it_cli.evaluation import METRICS

    return list(METRICS)


@hookimpl
def d2it_trackers():
    """The built-in experiment trackers."""
    from d2it_cli.trackers import TRACKERS

    return list(TRACKERS)
