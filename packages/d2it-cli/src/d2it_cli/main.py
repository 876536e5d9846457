"""The `d2it` command: a click group built by `make_cli`, with commands contributed by plugins."""

import errno
import importlib
import sys
import warnings

import click
from click.exceptions import NoArgsIsHelpError

import d2it
from d2it.errors import D2itError, PluginWarning
from d2it.registry import Registry, use_registry
from d2it_cli import threads
from d2it_cli.commands import failures


class D2itGroup(click.Group):
    """A click group whose every user-causable failure is one `error:` line and exit code 2 (see `failures`).

    Commands are imported lazily, when they are used.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = {}

    def add_lazy_command(self, name: str, path: str, short_help: str):
        """Register command `name` as "module:attribute", imported only when it is used; `short_help` for the list."""
        self.lazy_commands[name] = (path, short_help)

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy_commands:
            module, _, attribute = self.lazy_commands[name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """The command list, taking the help of commands not yet imported from their lazy entry."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None:
                rows.append((name, click.utils.make_default_short_help(self.lazy_commands[name][1], limit)))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # callers such as the demo handle errors themselves
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # `d2it train` alone: the help text, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                sys.exit(1)  # the reader of our output went away (e.g. `| head`)
            code = None if debug else failures.report(exc)
            if code is None:
                raise
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)


def load_registry(builtins_only: bool = False, collect: bool = True) -> Registry:
    """Load plugins, printing a one-line warning per plugin that fails instead of a traceback.

    collect: also gather every kind's specs now (calling every hook: a plugin that names its factories by
    "module:attr" references imports no model code here); `d2it` itself defers that to the first command
    that runs, so `d2it --help` calls no hook.
    """
    with _plugin_warnings():
        registry = Registry.from_entry_points(builtins_only=builtins_only)
    if collect:
        collect_specs(registry)
    return registry


def collect_specs(registry: Registry):
    """Gather every kind's specs, so a failing hook warns here, once."""
    with _plugin_warnings():
        for kind in d2it.KINDS:
            registry.specs(kind)


class _plugin_warnings:
    """Print each plugin warning raised inside the block as one line on stderr."""

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always", PluginWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        self._report(self._caught)

    @staticmethod
    def _report(caught):
        for w in caught:
            if issubclass(w.category, PluginWarning):
                click.echo(f"warning: {w.message}", err=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _print_version(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from d2it_cli.versions import version_report  # metadata only: no torch, no plugin imported

    click.echo(version_report())
    ctx.exit()


def make_cli(registry: Registry) -> click.Group:
    """Build the `d2it` group with every command the registry's plugins contribute."""

    @click.group(cls=D2itGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_print_version,
        help="Show the versions of d2it's packages, torch and the installed plugins, and exit.",
    )
    @click.option("--no-plugins", is_flag=True, help="Load only d2it's own components (no third-party plugins).")
    @click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
    @click.pass_context
    def cli(ctx, no_plugins, debug):
        """D²iT: Dynamic Diffusion Transformer — build, train, sample and evaluate."""
        ctx.ensure_object(dict)
        ctx.obj.update(registry=registry, debug=debug)
        collect_specs(registry)  # a command runs: gather the specs now, warning once per failing plugin
        ctx.with_resource(use_registry(registry))

    registry.add_commands(cli)
    return cli


def main(argv=None):
    """Entry point of the `d2it` console script."""
    threads.configure()  # first: OpenMP reads its settings when torch loads (a plugin may import torch)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # --no-plugins decides which commands exist, so it is read before click parses
        registry = load_registry(builtins_only="--no-plugins" in argv, collect=False)
    except D2itError as exc:
        if debug:
            raise
        sys.exit(failures.report(exc))
    cli = make_cli(registry)
    return cli.main(args=argv, prog_name="d2it", obj={})


if __name__ == "__main__":
    main()
