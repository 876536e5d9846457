"""`d2it plugins`: every registered component with its provider and version."""

import json

import click

from d2it.hookspecs import KINDS
from d2it_cli.table import format_table


@click.command()
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def plugins(obj, kind, as_json):
    """List registered components (name, kind, provider, version, summary)."""
    registry = obj["registry"]
    rows = []
    for k in [kind] if kind else KINDS:
        for spec in registry.specs(k):
            rows.append(
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "provider": spec.dist,
                    "version": spec.version,
                    "summary": spec.summary,
                    "aliases": list(spec.aliases),
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        format_table(
            ["kind", "name", "provider", "version", "summary"],
            [[r["kind"], r["name"], r["provider"], r["version"], r["summary"]] for r in rows],
        )
    )
