"""FROZEN: integration_tests/example_plugin as d2it 0.1.0 had it (commit 218742e, plugin API 1.0), renamed, plus
the `frozen-strided` sampler, which owns a `spacing` option with values of its own ("uniform", "logsnr").
Never update this package: it checks that a plugin written against an older d2it keeps working.

A third-party d2it plugin: the `frozen-tiny` backbone, `frozen-trapezoid` sampler, `frozen-sign` regularizer
and the `frozen-hello` command, written from docs/components.md alone. Its own tests (tests/) run d2it's
conformance suites on each component.

This module is the entry point, so every `d2it` start imports it: it names its components' factories and
configs by "module:attr" references and imports no torch and no model code (they live in `components`).
"""

import click

import d2it

COMPONENTS = "d2it_frozen_plugin_v0_1.components"


@d2it.hookimpl
def d2it_backbones():
    """The example backbone."""
    return [
        d2it.ComponentSpec(
            "frozen-tiny",
            "backbone",
            f"{COMPONENTS}:ExampleTiny",
            f"{COMPONENTS}:ExampleConfig",
            summary="example third-party backbone",
        )
    ]


@d2it.hookimpl
def d2it_samplers():
    """The example sampler and the strided one, whose `spacing` is its own option."""
    return [
        d2it.ComponentSpec(
            "frozen-trapezoid",
            "sampler",
            f"{COMPONENTS}:TrapezoidSampler",
            f"{COMPONENTS}:TrapezoidConfig",
            summary="example second-order ODE sampler",
        ),
        d2it.ComponentSpec(
            "frozen-strided",
            "sampler",
            f"{COMPONENTS}:StridedSampler",
            f"{COMPONENTS}:StridedConfig",
            summary="DDIM on its own steps: spacing uniform or logsnr",
        ),
    ]


@d2it.hookimpl
def d2it_regularizers():
    """The example regularizer."""
    return [
        d2it.ComponentSpec(
            "frozen-sign",
            "regularizer",
            f"{COMPONENTS}:SignQuantizer",
            f"{COMPONENTS}:SignConfig",
            summary="example 1-bit straight-through quantizer",
        )
    ]


@click.command("frozen-hello")
def frozen_hello():
    """Say hello from the example plugin."""
    click.echo("hello from d2it-frozen-plugin-v0-1")


@d2it.hookimpl
def d2it_commands(cli):
    """Add the example command."""
    cli.add_command(frozen_hello)
