"""`d2it build`: assemble a system from component names, count it, and optionally save it."""

import json

import click
import torch

from d2it import system as systems
from d2it.config import parse_sets
from d2it.counting import count
from d2it.errors import ConfigError
from d2it_cli.commands.params import POSITIVE_INT
from d2it_cli.commands.system_dir import SYSTEM_DIR
from d2it_cli.table import format_table

DEFAULT_GRAIN = "dgt-s"
# slots that are part of the system record; "system" holds record-level numbers
RECORD_FIELDS = {"image_size": int, "num_classes": int, "latent_scale": float}


def record_from_options(vae, backbone, refine, grain, sampler, schedule, attention, image_size, num_classes, sets):
    """A SystemRecord from `d2it build`-style options (also used by the demo)."""
    options = parse_sets(sets)
    record_opts = options.pop("system", {})
    extra = {}
    for key, value in record_opts.items():
        if key not in RECORD_FIELDS:
            raise ConfigError(f"system has no option {key!r}; valid options: {', '.join(RECORD_FIELDS)}")
        try:
            extra[key] = RECORD_FIELDS[key](value)
        except ValueError:
            raise ConfigError(f"system.{key} expects {RECORD_FIELDS[key].__name__}, got {value!r}") from None
    if vae == "none":
        vae = None
    if refine is not None and grain is None:
        grain = DEFAULT_GRAIN
    if grain == "none":
        grain = None
    fields = dict(
        vae=vae,
        backbone=backbone,
        refine=refine,
        grain=grain,
        sampler=sampler,
        schedule=schedule,
        attention=attention,
        image_size=image_size,
        num_classes=num_classes,
        options=options,
    )
    fields.update(extra)
    try:
        return systems.SystemRecord(**fields)
    except ConfigError as exc:  # the record's validators name the field; say it is a record-level option
        raise ConfigError(f"system.{exc}") from None


def count_system(system) -> list[dict]:
    """Parameters and GMACs of each weight-bearing part for one sample."""
    rows = []
    record = system.record
    parts = {"vae": (record.vae, system.vae), "grain": (record.grain, system.grain), "content": (None, system.content)}
    for part, (name, module) in parts.items():
        if module is None:
            continue
        if part == "content":
            name = f"{record.backbone}+{record.refine}" if system.routed else record.backbone
        with torch.random.fork_rng():
            torch.manual_seed(0)
            counts = count(module, *module.example_inputs(1))
        row = {"part": part, "name": name, **counts.as_dict()}
        note = getattr(module, "count_note", None)
        if note:
            row["note"] = note
        rows.append(row)
    return rows


def providers(system, registry) -> dict[str, str]:
    """Slot -> 'dist version' of the component in that slot (the VAE's regularizer included)."""
    return {slot: f"{p['dist']} {p['version']}" for slot, p in systems.providers(system.record, registry).items()}


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-count", is_flag=True, help="Skip MAC counting.")
@click.pass_obj
def build(
    obj,
    vae,
    backbone,
    refine,
    grain,
    sampler,
    schedule,
    attention,
    image_size,
    num_classes,
    sets,
    from_dir,
    out,
    as_json,
    no_count,
):
    """Assemble a system, print its parts with parameters and GMACs, and optionally save it."""
    registry = obj["registry"]
    if from_dir:
        system = systems.load(from_dir, registry)
    else:
        record = record_from_options(
            vae, backbone, refine, grain, sampler, schedule, attention, image_size, num_classes, sets
        )
        torch.manual_seed(0)
        system = systems.build(record, registry)
    system.eval()
    rows = [] if no_count else count_system(system)
    if out:
        systems.save(system, out, registry=registry)
    provider = providers(system, registry)
    total = {
        "params": sum(r["params"] for r in rows),
        "gmacs": round(sum(r["gmacs"] for r in rows), 2),
        "gmacs_without_attention": round(sum(r["gmacs_without_attention"] for r in rows), 2),
    }
    total["params_m"] = round(total["params"] / 1e6, 2)
    if as_json:
        doc = {"system": system.record.to_dict(), "providers": provider, "parts": rows, "total": total}
        if out:
            doc["out"] = str(out)
        click.echo(json.dumps(doc, indent=2))
        return
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
    if out:
        click.echo(f"\nwrote {out}")
