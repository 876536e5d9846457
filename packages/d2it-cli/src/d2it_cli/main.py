"""The `d2it` command: a click group built by `make_cli`, with commands contributed by plugins."""

import sys
import warnings

import click

import d2it
from d2it.errors import D2itError, PluginWarning
from d2it.registry import Registry, use_registry


class D2itGroup(click.Group):
    """A click group that turns user errors into one sentence and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except D2itError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def load_registry(builtins_only: bool = False) -> Registry:
    """Load plugins, printing a one-line warning per plugin that fails instead of a traceback."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        registry = Registry.from_entry_points(builtins_only=builtins_only)
        for kind in d2it.KINDS:  # collect specs now so a failing hook warns here, once
            registry.specs(kind)
    for w in caught:
        if issubclass(w.category, PluginWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return registry


def make_cli(registry: Registry) -> click.Group:
    """Build the `d2it` group with every command the registry's plugins contribute."""

    @click.group(cls=D2itGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(d2it.__version__, prog_name="d2it", message="%(prog)s %(version)s")
    @click.option("--no-plugins", is_flag=True, help="Load only d2it's own components (no third-party plugins).")
    @click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
    @click.pass_context
    def cli(ctx, no_plugins, debug):
        """D²iT: Dynamic Diffusion Transformer — build, train, sample and evaluate."""
        ctx.ensure_object(dict)
        ctx.obj.update(registry=registry, debug=debug)
        ctx.with_resource(use_registry(registry))

    registry.add_commands(cli)
    return cli


def main(argv=None):
    """Entry point of the `d2it` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # --no-plugins decides which commands exist, so it is read before click parses
        registry = load_registry(builtins_only="--no-plugins" in argv)
    except D2itError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    cli = make_cli(registry)
    return cli.main(args=argv, prog_name="d2it", obj={})


if __name__ == "__main__":
    main()
