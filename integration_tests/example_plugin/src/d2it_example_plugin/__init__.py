"""A third-party d2it plugin: the `example-tiny` backbone, `example-trapezoid` sampler, `example-sign` regularizer
and the `example-hello` command, written from docs/components.md alone. Its own tests (tests/) run d2it's
conformance suites on each component.

This module is the entry point, so every `d2it` start imports it: it names its components' factories and
configs by "module:attr" references and imports no torch and no model code (they live in `components`).
"""

import click

import d2it

COMPONENTS = "d2it_example_plugin.components"


@d2it.hookimpl
def d2it_backbones():
    """The example backbone."""
    return [
        d2it.ComponentSpec(
            "example-tiny",
            "backbone",
            f"{COMPONENTS}:ExampleTiny",
            f"{COMPONENTS}:ExampleConfig",
            summary="example third-party backbone",
        )
    ]


@d2it.hookimpl
def d2it_samplers():
    """The example sampler."""
    return [
        d2it.ComponentSpec(
            "example-trapezoid",
            "sampler",
            f"{COMPONENTS}:TrapezoidSampler",
            f"{COMPONENTS}:TrapezoidConfig",
            summary="example second-order ODE sampler",
        )
    ]


@d2it.hookimpl
def d2it_regularizers():
    """The example regularizer."""
    return [
        d2it.ComponentSpec(
            "example-sign",
            "regularizer",
            f"{COMPONENTS}:SignQuantizer",
            f"{COMPONENTS}:SignConfig",
            summary="example 1-bit straight-through quantizer",
        )
    ]


@click.command("example-hello")
def example_hello():
    """Say hello from the example plugin."""
    click.echo("hello from d2it-example-plugin")


@d2it.hookimpl
def d2it_commands(cli):
    """Add the example command."""
    cli.add_command(example_hello)
