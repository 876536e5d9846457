"""Memory copies per training step (forward + backward) of DiT, dense D²iT and sparse D²iT, counted by the profiler.

The H100 profile of a D²iT-XL step spent ~7% of GPU time in `aten::copy_` (234 calls per step): layout copies
around attention, casts under autocast. This counts, with the torch profiler on the CPU and small models of the
same structure, the calls per step of `aten::copy_` (every physical copy: `clone`, `contiguous`, copying
`reshape`, dtype casts) and `aten::cat` (the stacked q/k/v gradient), in fp32 and under bf16 autocast, next to
the counts of the code before the copies were removed (`BEFORE`, measured with this script at commit 6902482).
Counts are deterministic, so `--quick` runs the same models. Writes results/copies.*.
Run: python benchmarks/run.py copies
"""

import argparse

import torch
from common import machine, markdown_table, save
from torch.profiler import ProfilerActivity, profile

from d2it.registry import default_registry

OPS = ("aten::copy_", "aten::cat", "aten::clone", "aten::_to_copy")
SIZES = {"latent": 16, "batch": 2, "width": {"hidden_size": 64, "num_heads": 2}, "depth": 4, "refine_depth": 1}
# measured with this script on the code before the changes (commit 6902482): the baseline of the table
BEFORE = {
    "DiT": {"fp32": {"aten::copy_": 51, "aten::cat": 10, "aten::clone": 25, "aten::_to_copy": 1},
            "bf16 autocast": {"aten::copy_": 281, "aten::cat": 10, "aten::clone": 25, "aten::_to_copy": 230}},
    "D²iT dense": {"fp32": {"aten::copy_": 61, "aten::cat": 12, "aten::clone": 27, "aten::_to_copy": 3},
                   "bf16 autocast": {"aten::copy_": 345, "aten::cat": 12, "aten::clone": 27, "aten::_to_copy": 286}},
    "D²iT sparse": {"fp32": {"aten::copy_": 57, "aten::cat": 13, "aten::clone": 15, "aten::_to_copy": 6},
                    "bf16 autocast": {"aten::copy_": 310, "aten::cat": 13, "aten::clone": 15, "aten::_to_copy": 258}},
}  # fmt: skip


def build_models(sizes: dict) -> dict:
    """DiT (patch 2), dense D²iT (window8 RefineNet) and sparse D²iT (window8-sparse) of the same small width."""
    reg = default_registry()
    attention = reg.create("attention", "sdpa")
    ctx = dict(input_size=sizes["latent"], in_channels=4, num_classes=1000, attention=attention)
    width, depth, refine = sizes["width"], sizes["depth"], sizes["refine_depth"]
    torch.manual_seed(0)
    models = {"DiT": reg.create("backbone", "dit-s", {**width, "depth": depth}, grains=None, **ctx)}
    for name, refiner in (("D²iT dense", "window8"), ("D²iT sparse", "window8-sparse")):
        backbone = reg.create("backbone", "dit-s", {**width, "depth": depth - refine}, grains=2, **ctx)
        models[name] = reg.create("refiner", refiner, {"depth": refine}, backbone=backbone, attention=attention)
    return models


def step_counts(model, batch: int, autocast: bool) -> dict:
    """Calls of each of `OPS` in one training step (forward, loss, backward), after a warm-up step."""
    args = model.example_inputs(batch)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(*args)
        out.float().square().mean().backward()

    model.train()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls = dict.fromkeys(OPS, 0)
    for event in prof.events():
        # 0-d copies are Python scalars wrapped by CPU kernels (kernel arguments on CUDA), not memory copies
        if event.name in calls and (event.name == "aten::cat" or (event.input_shapes and event.input_shapes[0])):
            calls[event.name] += 1
    return calls


def blocks(model) -> int:
    """Transformer blocks of a model (backbone and RefineNet)."""
    return sum(len(part.blocks) for part in (model, getattr(model, "backbone", None), getattr(model, "refiner", None))
               if part is not None and hasattr(part, "blocks"))  # fmt: skip


def run(quick: bool) -> dict:
    """Count, print the table and write the JSON (`quick` is the same run: counts do not vary)."""
    models = build_models(SIZES)
    counts = {}
    for name, model in models.items():
        counts[name] = {"blocks": blocks(model)}
        for precision, amp in (("fp32", False), ("bf16 autocast", True)):
            counts[name][precision] = step_counts(model, SIZES["batch"], amp)
    result = {"setup": machine(**SIZES, quick=quick), "counts": counts, "before": BEFORE}
    save("copies", result, markdown(result), quick)
    return result


def markdown(result: dict) -> str:
    """One table: copy_ and cat calls per step, before and after, per model and precision."""
    s = result["setup"]
    head = (
        f"Calls per training step (forward + backward) counted by the torch profiler on the CPU ({s['torch']}): "
        f"batch {s['batch']}, latent 4x{s['latent']}x{s['latent']}, width {s['width']['hidden_size']}, "
        f"depth {s['depth']} (D²iT: {s['depth'] - s['refine_depth']} + {s['refine_depth']} RefineNet window8). "
        "copy_ = every physical copy (clone, contiguous, copying reshape, dtype cast, bias into addmm's output; 0-d "
        "scalars left out); before = commit 6902482."
    )
    rows = []
    for name, c in result["counts"].items():
        for precision in ("fp32", "bf16 autocast"):
            now, was = c[precision], result["before"].get(name, {}).get(precision, {})
            rows.append([name, precision, c["blocks"],
                         f"{was.get('aten::copy_', '-')} → {now['aten::copy_']}",
                         f"{was.get('aten::cat', '-')} → {now['aten::cat']}",
                         f"{was.get('aten::clone', '-')} → {now['aten::clone']}",
                         f"{was.get('aten::_to_copy', '-')} → {now['aten::_to_copy']}"])  # fmt: skip
    table = markdown_table(["model", "precision", "blocks", "copy_", "cat", "clone", "_to_copy (casts)"], rows)
    return f"{head}\n\n{table}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same counts (they do not depend on timing)")
    run(parser.parse_args().quick)
