"""`d2it build`: assemble a system from component names, count it, and optionally save it."""

import json

import click

from d2it import system as systems
from d2it_cli.build import DEFAULT_GRAIN, assemble
from d2it_cli.commands.params import POSITIVE_INT
from d2it_cli.commands.system_dir import SYSTEM_DIR
from d2it_cli.table import format_table


@click.command()
@click.option("--vae", default="none", show_default=True, help="VAE component ('none' for network-only counting).")
@click.option("--backbone", default="dit-xl", show_default=True, help="Backbone component.")
@click.option("--refine", default=None, help="RefineNet component; unset builds a plain DiT.")
@click.option("--grain", default=None, help=f"Grain predictor (default {DEFAULT_GRAIN} when --refine is set).")
@click.option("--sampler", default="ddpm", show_default=True)
@click.option("--schedule", default="linear", show_default=True)
@click.option("--attention", default="auto", show_default=True, help="Attention backend.")
@click.option("--image-size", default=256, show_default=True, type=POSITIVE_INT)
@click.option("--num-classes", default=1000, show_default=True, type=POSITIVE_INT, help="1 = unconditional.")
@click.option("--set", "sets", multiple=True, metavar="SLOT.OPTION=VALUE", help="Override a component option.")
@click.option("--from", "from_dir", type=SYSTEM_DIR, help="Load a saved model directory (or hf://OWNER/NAME).")
@click.option("--out", type=click.Path(file_okay=False), help="Write the model directory here.")
@click.option("--overwrite", is_flag=True, help="Replace the system already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-count", is_flag=True, help="Skip MAC counting.")
@click.pass_obj
def build(obj, as_json, no_count, **options):
    """Assemble a system, print its parts with parameters and GMACs, and optionally save it."""
    system, doc = assemble(**options, count_macs=not no_count, registry=obj["registry"])
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    provider, rows, total = doc["providers"], doc["parts"], doc["total"]
    click.echo(
        format_table(
            ["slot", "component", "provider"],
            [[s, n, provider[s]] for s, (_, n) in systems.components(system.record).items()],
        )
    )
    if rows:
        click.echo()
        table = [
            [r["part"], r["name"], f"{r['params_m']:.2f}", f"{r['gmacs']:.2f}", f"{r['gmacs_without_attention']:.2f}"]
            for r in rows
        ]
        table.append(
            [
                "total",
                "",
                f"{total['params_m']:.2f}",
                f"{total['gmacs']:.2f}",
                f"{total['gmacs_without_attention']:.2f}",
            ]
        )
        click.echo(format_table(["part", "component", "params (M)", "GMACs", "GMACs w/o attn"], table))
        for r in rows:
            if "note" in r:
                click.echo(f"note ({r['part']}): {r['note']}")
    if "out" in doc:
        click.echo(f"\nwrote {doc['out']}")
