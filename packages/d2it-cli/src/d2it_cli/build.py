"""Assembling a system from component names (`d2it build`): the record, its parameters and GMACs, saving it."""

import torch

from d2it import system as systems
from d2it.config import parse_sets
from d2it.counting import count
from d2it.errors import ConfigError
from d2it.registry import default_registry
from d2it_cli.outputs import save_system, system_target

DEFAULT_GRAIN = "dgt-s"
# slots that are part of the system record; "system" holds record-level numbers
RECORD_FIELDS = {"image_size": int, "num_classes": int, "latent_scale": float}


def record_from_options(*, vae="none", refine=None, grain=None, sets=(), **fields) -> systems.SystemRecord:
    """A SystemRecord from `d2it build`'s options: component names ('none' for no VAE or grain predictor,
    `dgt-s` as the grain predictor of a routed system), `SystemRecord` fields and `--set slot.option=value`
    items (`system.image_size=N` and `system.num_classes=N` set record fields)."""
    options = parse_sets(sets)
    for key, value in options.pop("system", {}).items():
        if key not in RECORD_FIELDS:
            raise ConfigError(f"system has no option {key!r}; valid options: {', '.join(RECORD_FIELDS)}")
        try:
            fields[key] = RECORD_FIELDS[key](value)
        except ValueError:
            raise ConfigError(f"system.{key} expects {RECORD_FIELDS[key].__name__}, got {value!r}") from None
    if refine is not None and grain is None:
        grain = DEFAULT_GRAIN
    vae, grain = (None if name == "none" else name for name in (vae, grain))
    try:
        return systems.SystemRecord(vae=vae, refine=refine, grain=grain, options=options, **fields)
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


def assemble(*, from_dir=None, out=None, overwrite=False, count_macs: bool = True, registry=None, **choices) -> tuple:
    """Build a system from `choices` (as `record_from_options`; seeded, so weights repeat) or load `from_dir`;
    count it (`count_macs`) and save it to `out` (new or empty, or a system replaced with `overwrite`).

    Returns (system, the document `d2it build --json` prints: the record, each slot's provider,
    per-part parameters and GMACs, and their totals).
    """
    registry = registry or default_registry()
    if out:
        system_target(out, overwrite=overwrite)
    if from_dir:
        system = systems.load(from_dir, registry)
    else:
        torch.manual_seed(0)
        system = systems.build(record_from_options(**choices), registry)
    system.eval()
    rows = count_system(system) if count_macs else []
    if out:
        save_system(system, out, overwrite=overwrite, registry=registry)
    total = {
        "params": sum(r["params"] for r in rows),
        "gmacs": round(sum(r["gmacs"] for r in rows), 2),
        "gmacs_without_attention": round(sum(r["gmacs_without_attention"] for r in rows), 2),
    }
    total["params_m"] = round(total["params"] / 1e6, 2)
    doc = {"system": system.record.to_dict(), "providers": providers(system, registry), "parts": rows, "total": total}
    if out:
        doc["out"] = str(out)
    return system, doc
