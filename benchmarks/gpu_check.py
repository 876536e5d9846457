"""One-go GPU check: attention backends agree; training and sampling speed of D²iT-XL vs DiT-XL/2, before and after.

"before" is the eager baseline (batch 32, bf16 autocast, fused AdamW, a per-tensor EMA loop); "after" the
fast path (regional torch.compile of the transformer blocks, the largest batch memory allows, foreach EMA).
Both run in the same process on the same card, so the comparison is fair. Reports, as one table and as JSON
under $OUT (or ./gpu-results): images/s, utilisation = 3 x training MACs per image x images/s / the bf16
matmul MAC rate measured in the same run, peak memory, host syncs per training step and per sampling step
(CUDA sync-debug mode), and top-kernel profiles of one D²iT-XL step before and after. Targets (issue 15):
D²iT-XL and DiT-XL/2 training >= 45% of the matmul rate; sparse D²iT-XL time per image <= 1.05 x (its GMACs /
dense GMACs) x dense time per image; guided sampling sparse D²iT-XL >= 0.85 x DiT-XL/2 images/s.
`--dry-run`: tiny sizes on the CPU with dynamo's eager backend (a test of this script).
Run: bash benchmarks/gpu_check.sh [--dry-run] [--budget SECONDS]
"""

import argparse
import gc
import json
import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_fn, rate  # noqa: E402

from d2it.attention import math_attention, sdpa_attention, xformers_attention, xformers_available  # noqa: E402
from d2it.counting import count  # noqa: E402
from d2it.hostsync import HostTransfers, cuda_autocast, fake_cuda  # noqa: E402
from d2it.registry import default_registry  # noqa: E402
from d2it.system import SystemRecord  # noqa: E402
from d2it_cli.engine.ema import EMA  # noqa: E402
from d2it_cli.engine.fastpaths import autocast, configure_tf32, make_adamw  # noqa: E402
from d2it_sampling.guidance import conditioned_model  # noqa: E402
from d2it_sampling.pipeline import make_diffusion  # noqa: E402
from d2it_sampling.samplers import sample_ddpm  # noqa: E402
from d2it_transformers import sparse  # noqa: E402
from d2it_transformers.regional import compile_blocks, compile_failures, uncompile  # noqa: E402

NAMES = ["DiT-XL/2", "D²iT-XL", "D²iT-XL sparse"]  # the baseline first: two targets need it
TARGET_UTIL, TARGET_SPARSE, TARGET_SAMPLE = 0.45, 1.05, 0.85


class Clock:
    """The run's time budget: stages that would overrun it are skipped and reported as such."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget - self.elapsed()


def registry():
    """The default registry; run from source (PYTHONPATH, no installed entry points) the built-ins are added."""
    reg = default_registry()
    if "dit-xl" not in reg.names("backbone"):
        import d2it.plugin
        import d2it_sampling.plugin
        import d2it_transformers.plugin

        for module in (d2it.plugin, d2it_transformers.plugin, d2it_sampling.plugin):
            reg.register(module, module.__name__)
    return reg


def check_attention(device, dtype) -> dict:
    """Max abs difference of each backend from the fp32 math reference, with and without a key mask."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, generator=g).to(device) for _ in range(3))
    mask = (torch.rand(2, 1, 1, 256, generator=g) > 0.3).to(device)
    out = {"dtype": str(dtype).removeprefix("torch."), "xformers": "available" if xformers_available() else "missing"}
    backends = {"sdpa": sdpa_attention, "math": math_attention}
    if xformers_available() and device.type == "cuda" and dtype != torch.float32:
        backends["xformers"] = xformers_attention
    for m_name, m in (("no mask", None), ("key mask", mask)):
        ref = math_attention(q, k, v, m)
        for name, fn in backends.items():
            got = fn(q.to(dtype), k.to(dtype), v.to(dtype), m).float()
            out[f"{name}, {m_name}"] = float((got - ref).abs().max())
    tol = 2e-2 if dtype != torch.float32 else 1e-5
    out["ok"] = all(v <= tol for key, v in out.items() if "," in key)
    out["tolerance"] = tol
    return out


def build(name: str, sizes: dict, device):
    """DiT-XL/2 or D²iT-XL (dense or sparse RefineNet) with random non-zero weights."""
    reg = registry()
    att = reg.create("attention", "auto")
    ctx = dict(input_size=sizes["latent"], in_channels=4, num_classes=1000, attention=att)
    opts = sizes["options"]
    torch.manual_seed(0)
    with torch.device(device):
        if name == "DiT-XL/2":
            model = reg.create("backbone", "dit-xl", opts, grains=None, **ctx)
        else:
            bb = reg.create("backbone", "dit-xl", {**opts, "depth": sizes["routed_depth"]}, grains=2, **ctx)
            refine = "window16-sparse" if "sparse" in name else "window16"
            model = reg.create("refiner", refine, {"depth": sizes["refine_depth"]}, backbone=bb, attention=att)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
    return model


def inputs(model, batch, device, seed=0):
    """x, t, y and a random half-fine grain map (fresh per seed) for one batch."""
    g = torch.Generator().manual_seed(seed)
    size = model.input_size
    x = torch.randn(batch, 4, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    gm = (torch.rand(batch, size // 2, size // 2, generator=g) < 0.5).long().to(device)
    return x, t, y, gm


def gmacs_per_image(model, device, batch: int) -> float:
    """Forward GMACs per image, averaged over `batch` random grain maps (the sparse cost depends on them)."""
    x, t, y, gm = inputs(model, batch, device, seed=1)
    extra = (gm,) if model.grains else ()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return count(model.eval(), x, t, y, *extra).macs / 1e9 / batch


def loop_ema_update(ema: EMA, module):
    """The pre-foreach EMA update: one lerp launch per tensor (the "before" baseline)."""
    with torch.no_grad():
        for k, v in module.state_dict().items():
            s = ema.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - ema.decay)
            else:
                s.copy_(v)


def host_syncs(device, fn) -> list[str] | None:
    """Where `fn()` made host syncs, in CUDA sync-debug mode: the innermost frames of each (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    sites = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):  # the Python frames that called the syncing op, innermost first
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("warnings.py")][-4:]
            sites.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def count_syncs(device, fn) -> int | None:
    """Host syncs made by `fn()`, counted in CUDA sync-debug mode (None off CUDA)."""
    sites = host_syncs(device, fn)
    return None if sites is None else len(sites)


def fit_batch(before: dict, device, cap: int) -> int:
    """The largest multiple of 16 whose activations fit 90% of the card, from the eager run's memory per sample.

    Compiled blocks keep fewer activations than eager ones, so this errs on the safe side.
    """
    if device.type != "cuda" or not before.get("peak_memory_mib"):
        return 64
    total = torch.cuda.get_device_properties(device).total_memory / 2**20
    per_sample = (before["peak_memory_mib"] - before["resident_mib"]) / before["batch"]
    return max(16, min(cap, int((0.9 * total - before["resident_mib"]) / per_sample) // 16 * 16))


@contextmanager
def cudnn_attention(enabled: bool | None):
    """SDPA with cuDNN's attention allowed or not (None: leave as is); restores the previous flag."""
    previous = torch.backends.cuda.cudnn_sdp_enabled()
    if enabled is not None:
        torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(previous)


def attention_choice(device, dtype) -> dict:
    """Forward + backward time of the blocks' attention (qkv views, head dim 72) with and without cuDNN attention.

    On CUDA the faster setting is used for every "after" run; "before" keeps PyTorch's default choice.
    """
    if device.type != "cuda":
        return {"cudnn": None}
    qkv = torch.randn(128, 256, 3 * 1152, device=device, dtype=dtype, requires_grad=True)

    def run():
        q, k, v = qkv.view(128, 256, 3, 16, 72).permute(2, 0, 3, 1, 4).unbind(0)
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

    times = {}
    for cudnn in (True, False):
        with cudnn_attention(cudnn):
            times[cudnn] = interleaved({"a": run}, repeats=10, warmup=3, device=device)["a"]["median"]
    return {"cudnn_on_ms": 1e3 * times[True], "cudnn_off_ms": 1e3 * times[False], "cudnn": times[True] < times[False]}


def free(device):
    """Release cached memory between configurations."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def profile_step(step, device, path: Path, rows: int = 25) -> list[dict]:
    """Torch-profiler table (top kernels by device time) of one step, written to `path`; the top rows as dicts."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = events.table(sort_by=key, row_limit=rows)
    except Exception:  # noqa: BLE001 (newer torch names it device time)
        key = "self_device_time_total"
        table = events.table(sort_by=key, row_limit=rows)
    path.write_text(table + "\n")
    attr = key.removesuffix("_total")
    top = sorted(events, key=lambda e: getattr(e, attr, 0) or 0, reverse=True)[:10]
    return [{"name": e.key[:80], "self_ms": round((getattr(e, attr, 0) or 0) / 1e3, 3), "calls": e.count} for e in top]


class Trainer:
    """One model's training step (forward, backward, fused AdamW, EMA) at a chosen batch and fast-path setting."""

    def __init__(self, model, device, precision):
        self.model, self.device, self.precision = model, device, precision
        self.opt = make_adamw(model.parameters(), lr=1e-4, weight_decay=0.0)
        self.ema = EMA(model, decay=0.9999)
        self.foreach_ema = True
        self.i = 0

    def prepare(self, batch: int):
        """Inputs for `batch`: three grain maps in turn, each step a new tensor (a new packing, as in training)."""
        self.batch = batch
        self.data = [inputs(self.model, batch, self.device, seed=s) for s in range(3)]

    def step(self):
        """One training step on the next prepared batch."""
        x, t, y, gm = self.data[self.i % len(self.data)]
        self.i += 1
        extra = (gm.clone(),) if self.model.grains else ()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss = self.model(x, t, y, *extra).float().square().mean()
        loss.backward()
        self.opt.step()
        if self.foreach_ema:
            self.ema.update(self.model)
        else:
            loop_ema_update(self.ema, self.model)

    def measure(self, repeats: int, warmup: int) -> dict:
        """Step time stats, images/s and peak memory (MiB) at the prepared batch."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = interleaved({"step": self.step}, repeats=repeats, warmup=warmup, device=self.device)["step"]
        cuda = self.device.type == "cuda"
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        resident = torch.cuda.memory_allocated() / 2**20 if cuda else None  # weights, grads, optimizer, EMA
        return {"step": times, "images_per_s": self.batch / times["median"], "peak_memory_mib": peak,
                "resident_mib": resident}  # fmt: skip


def train_model(name, sizes, device, precision, plan, clock, out_dir) -> dict:
    """Before (eager) and after (compiled, batch search) training rows of one model, plus sampling rows."""
    default_cudnn = torch.backends.cuda.cudnn_sdp_enabled()
    model = build(name, sizes, device)
    row = {"gmacs_per_image": gmacs_per_image(model, device, sizes["count_batch"] if model.grains else 1)}
    model.train()
    trainer = Trainer(model, device, precision)
    # before: the eager baseline settings of the last GPU check
    trainer.foreach_ema = False
    trainer.prepare(sizes["batch"])
    row["before"] = {"batch": sizes["batch"], "grad_checkpointing": False, **trainer.measure(plan["repeats"], 3)}
    if name == "D²iT-XL":
        row["before"]["profile_top"] = profile_step(trainer.step, device, out_dir / "profile-d2it-xl-before.txt")
    # after: regional compile, foreach EMA, the largest batch memory allows
    trainer.foreach_ema = True
    if plan["cudnn"] is not None:  # main restores the default around each model
        torch.backends.cuda.enable_cudnn_sdp(plan["cudnn"])
    compile_blocks(model, **plan["compile"])
    batches = [b if b != "fit" else fit_batch(row["before"], device, plan["max_batch"]) for b in plan["batches"]]
    tried = []
    while batches:
        batch = batches.pop(0)
        if clock.left() < plan["stage_seconds"]:
            tried.append({"batch": batch, "skipped": "time budget"})
            continue
        try:
            trainer.prepare(batch)
            result = {"batch": batch, "grad_checkpointing": False, **trainer.measure(plan["repeats"], 3)}
        except torch.OutOfMemoryError:
            result = {"batch": batch, "error": "out of memory"}
            if batch > 16:
                batches.append(max(16, batch // 32 * 16))  # half of it, once more
        free(device)
        tried.append(result)
        if "images_per_s" in result and plan["refit"] and not any(r.get("refit") for r in tried):
            # compiled blocks keep fewer activations than eager ones: fit again from this measurement
            refit = fit_batch(result, device, plan["max_batch"])
            if refit >= 1.15 * batch:
                batches.append(refit)
                result["refit"] = refit
    ok = [r for r in tried if "images_per_s" in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    if best is not None and name == "D²iT-XL" and clock.left() > 2 * plan["stage_seconds"]:
        # with gradient checkpointing: lower throughput (one more forward), about twice the batch fits
        model.set_grad_checkpointing(True)
        try:
            trainer.prepare(2 * best["batch"])
            ck = {"batch": 2 * best["batch"], "grad_checkpointing": True, **trainer.measure(plan["repeats"], 2)}
        except torch.OutOfMemoryError:
            ck = {"batch": 2 * best["batch"], "grad_checkpointing": True, "error": "out of memory"}
        model.set_grad_checkpointing(False)
        free(device)
        tried.append(ck)
    row["after_tried"] = tried
    row["compile_failures"] = compile_failures(model)
    if best is not None:
        trainer.prepare(best["batch"])
        row["after"] = best
        sites = host_syncs(device, trainer.step)
        row["after"]["host_syncs_per_step"] = None if sites is None else len(sites)
        row["after"]["host_sync_sites"] = sites
        if name == "D²iT-XL":
            best["profile_top"] = profile_step(trainer.step, device, out_dir / "profile-d2it-xl-after.txt")
    torch.backends.cuda.enable_cudnn_sdp(default_cudnn)
    del trainer
    free(device)
    row["sample"] = sample_model(model, sizes, device, precision, plan, clock)
    del model
    free(device)
    return row


def sample_model(model, sizes, device, precision, plan, clock) -> dict:
    """Guided DDPM sampling images/s, eager then compiled, and host syncs per step of the compiled run."""
    out = {}
    model.eval()
    batch, steps = sizes["sample_batch"], plan["steps"]
    diffusion = make_diffusion(SystemRecord(backbone="dit-xl", refine="window16"), steps)
    x, _, y, gm = inputs(model, batch, device, seed=5)
    gm = gm if model.grains else None
    fn = conditioned_model(model, y, gm, cfg_scale=1.5)

    def sample():
        with torch.no_grad(), autocast(device, precision):
            return sample_ddpm(fn, diffusion, x, grain_map=gm, progress=False)

    for mode in ("before", "after"):
        if mode == "before":
            uncompile(model)
        else:
            compile_blocks(model, **plan["compile"])
        if clock.left() < plan["stage_seconds"] / 2:
            out[mode] = {"skipped": "time budget"}
            continue
        with cudnn_attention(plan["cudnn"] if mode == "after" else None):
            times = interleaved({"sample": sample}, repeats=2, warmup=1, device=device)["sample"]
            out[mode] = {"batch": batch, "steps": steps, "sample": times, "images_per_s": batch / times["median"]}
            if mode == "after":
                syncs = count_syncs(device, sample)
                out[mode]["host_syncs_per_step"] = None if syncs is None else syncs / steps
    return out


def sparse_forward_syncs(sizes, device, precision) -> dict:
    """Host syncs of one sparse D²iT forward on a new grain map (expected: 1, the packing), after a warm-up one.

    On CUDA counted in sync-debug mode, with where each happened; on the CPU (the dry run) by the op log of
    `d2it.hostsync` on fake CUDA tensors under bf16 autocast, the mechanism of the CPU tests.
    """
    small = {**sizes, "routed_depth": 1, "refine_depth": 1}
    if device.type != "cuda":
        return fake_cuda_forward_syncs(small)
    model = build("D²iT-XL sparse", small, device).train()
    x, t, y, gm = inputs(model, 4, device)
    with autocast(device, precision):
        model(x, t, y, gm.clone())  # the first call also initialises CUDA libraries (their own syncs)
        sites = host_syncs(device, lambda: model(x, t, y, gm.clone()))
    return {"count": len(sites), "sites": sites, "method": "CUDA sync-debug mode"}


def fake_cuda_forward_syncs(sizes) -> dict:
    """The sparse forward's host syncs on fake CUDA: the packing's `host_list` calls plus every logged transfer."""
    model = build("D²iT-XL sparse", sizes, torch.device("cpu")).train()
    args = inputs(model, 4, torch.device("cpu"))
    real, lengths = sparse.host_list, []
    sparse.host_list = lambda counts: lengths.append(real(counts)) or lengths[-1]
    try:
        with torch.no_grad():
            model(*args)
        sites = []
        sparse.host_list = lambda counts: sites.append("host_list (the packing)") or lengths[0]
        with fake_cuda() as mode:
            model = build("D²iT-XL sparse", sizes, torch.device("cuda")).train()
            x, t, y, gm = (mode.from_tensor(a).to("cuda") for a in args)
            with cuda_autocast(torch.bfloat16), HostTransfers() as log:
                model(x, t, y, gm.clone())
    finally:
        sparse.host_list = real
    sites += log.events
    return {"count": len(sites), "sites": sites, "method": "fake CUDA op log (d2it.hostsync), bf16 autocast"}


def utilisation(row: dict, mm_rate: float) -> float:
    """3 x forward MACs per image x images/s over the measured matmul MAC rate (forward + backward = 3 forwards)."""
    return 3 * row["gmacs"] * 1e9 * row["images_per_s"] / mm_rate


def gib(mib) -> str:
    """MiB as GiB text, '-' for none."""
    return "-" if mib is None else f"{mib / 1024:.1f}"


def summarise(result: dict) -> tuple[list[list[str]], dict]:
    """Table rows and targets from the measured numbers."""
    mm = result["matmul"]["gmacs_per_s"] * 1e9
    rows, train = [], result["train"]
    for name, row in train.items():
        for mode in ("before", "after"):
            r = row.get(mode)
            if not r or "images_per_s" not in r:
                rows.append([name, f"train {mode}", "-", "-", "skipped", "-", "-", "-"])
                continue
            r["gmacs"] = row["gmacs_per_image"]
            r["utilisation"] = utilisation(r, mm)
            peak = gib(r["peak_memory_mib"])
            syncs = r.get("host_syncs_per_step")
            rows.append([name, f"train {mode}", str(r["batch"]), "yes" if r["grad_checkpointing"] else "no",
                         f"{r['images_per_s']:.1f}", f"{100 * r['utilisation']:.1f}%", peak,
                         "-" if syncs is None else str(syncs)])  # fmt: skip
        for ck in row.get("after_tried", []):
            if ck.get("grad_checkpointing") and "images_per_s" in ck:
                ck["gmacs"] = row["gmacs_per_image"]
                ck["utilisation"] = utilisation(ck, mm)
                rows.append([name, "train after", str(ck["batch"]), "yes", f"{ck['images_per_s']:.1f}",
                             f"{100 * ck['utilisation']:.1f}%", gib(ck["peak_memory_mib"]), "-"])  # fmt: skip
        for mode in ("before", "after"):
            s = row.get("sample", {}).get(mode, {})
            if "images_per_s" in s:
                syncs = s.get("host_syncs_per_step")
                rows.append([name, f"sample {mode}", f"{s['batch']}x2 cfg, {s['steps']} steps", "-",
                             f"{s['images_per_s']:.1f}", "-", "-", "-" if syncs is None else f"{syncs:g}"])  # fmt: skip
    targets = {}

    def after(name, key="after"):
        return train.get(name, {}).get(key) or {}

    for name in ("D²iT-XL", "DiT-XL/2"):
        u = after(name).get("utilisation")
        targets[f"{name} training utilisation >= {TARGET_UTIL:.0%}"] = {
            "value": u,
            "met": u is not None and u >= TARGET_UTIL,
        }
    dense, sparse = after("D²iT-XL"), after("D²iT-XL sparse")
    if "images_per_s" in dense and "images_per_s" in sparse:
        gmac_ratio = train["D²iT-XL sparse"]["gmacs_per_image"] / train["D²iT-XL"]["gmacs_per_image"]
        time_ratio = dense["images_per_s"] / sparse["images_per_s"]  # sparse time per image / dense
        targets[f"sparse time/image <= {TARGET_SPARSE} x GMAC ratio x dense"] = {
            "time_ratio": time_ratio, "gmac_ratio": gmac_ratio, "value": time_ratio / gmac_ratio,
            "met": time_ratio <= TARGET_SPARSE * gmac_ratio}  # fmt: skip
    s_sparse = train.get("D²iT-XL sparse", {}).get("sample", {}).get("after", {})
    s_dit = train.get("DiT-XL/2", {}).get("sample", {}).get("after", {})
    if "images_per_s" in s_sparse and "images_per_s" in s_dit:
        r = s_sparse["images_per_s"] / s_dit["images_per_s"]
        targets[f"sampling sparse D²iT-XL / DiT-XL/2 >= {TARGET_SAMPLE}"] = {"value": r, "met": r >= TARGET_SAMPLE}
    return rows, targets


def print_table(result: dict, rows, targets):
    """The one table: training and sampling rows, then the targets."""
    setup = result["setup"]
    head = ["model", "run", "batch", "ckpt", "images/s", "util", "peak GiB", "syncs/step"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    mm = result["matmul"]["gmacs_per_s"] / 1e3
    print(f"\n{setup.get('gpu', setup['device'])}, torch {setup['torch']}, {setup['precision']}; "
          f"bf16 matmul {mm:.0f} TMAC/s ({2 * mm:.0f} TFLOP/s); util = 3 x GMACs x images/s / matmul rate")  # fmt: skip
    for r in [head, *rows]:
        print(" | ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    for key, t in targets.items():
        value = t.get("value")
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"{'MET ' if t['met'] else 'MISS'} {key}: {shown}")
    for name, row in result["train"].items():
        for failure in row.get("compile_failures") or ([row["error"]] if "error" in row else []):
            print(f"{name}: {failure}")
    print(f"after: SDPA attention {result.get('attention_choice')}")
    print(f"sparse forward host syncs (new grain map, {result.get('sync_count_method')}): "
          f"{result.get('sparse_forward_syncs')}; {result['seconds']:.0f} s")  # fmt: skip
    for site in result.get("sparse_forward_sync_sites") or ():
        print(f"  sync at {site}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (a test of this script)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-results", help="result folder")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds; later stages are skipped past it")
    parser.add_argument("--models", default=",".join(NAMES), help="comma-separated subset of " + ", ".join(NAMES))
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    precision = "bf16" if cuda else "fp32"
    half = torch.bfloat16 if cuda else torch.float32
    if args.dry_run:
        sizes = {"latent": 8, "batch": 2, "sample_batch": 2, "count_batch": 2, "routed_depth": 1, "refine_depth": 1,
                 "options": {"depth": 2, "hidden_size": 64, "num_heads": 2}}  # fmt: skip
        plan = {"repeats": 1, "steps": 2, "batches": [4], "refit": False, "max_batch": 8, "stage_seconds": 0,
                "compile": {"backend": "eager", "dynamic": True}}  # fmt: skip
        mm_n = 256
    else:
        sizes = {"latent": 32, "batch": 32, "sample_batch": 32, "count_batch": 8, "routed_depth": 22,
                 "refine_depth": 6, "options": {}}  # fmt: skip
        # dynamic shapes: one compiled graph per block type for every batch size (and packed token count)
        plan = {"repeats": 4, "steps": 10, "batches": ["fit"], "refit": True, "max_batch": 256, "stage_seconds": 25,
                "compile": {"dynamic": True}}  # fmt: skip
        mm_n = 8192
    # every block type, batch size and grad mode adds a cache entry to the one shared block code object
    for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(64 if "accumulated" not in key else 512,
                                                   getattr(torch._dynamo.config, key)))  # fmt: skip
    if cuda:
        configure_tf32(True)
    clock = Clock(args.budget)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu-check-dry-run.json" if args.dry_run else "gpu-check.json")
    result = {"setup": machine(device, dry_run=args.dry_run, precision=precision, **sizes, plan=plan)}
    result["attention"] = check_attention(device, half)
    mm, macs = matmul_fn(mm_n, dtype=half, device=device)
    mm_rate = rate(interleaved({"mm": mm}, repeats=10, warmup=3, device=device)["mm"], macs)
    result["matmul"] = {"n": mm_n, "dtype": str(half).removeprefix("torch."), "gmacs_per_s": mm_rate / 1e9}
    result["attention_choice"] = attention_choice(device, half)
    plan["cudnn"] = result["attention_choice"]["cudnn"]
    syncs = sparse_forward_syncs(sizes, device, precision)
    result["sparse_forward_syncs"], result["sparse_forward_sync_sites"] = syncs["count"], syncs["sites"]
    result["sync_count_method"] = syncs["method"]
    free(device)
    result["train"] = {}
    for name in [n for n in NAMES if n in args.models.split(",")]:
        print(f"[{clock.elapsed():.0f} s] {name}", flush=True)
        try:
            with cudnn_attention(None):  # restores PyTorch's default if a model fails half-way
                result["train"][name] = train_model(name, sizes, device, precision, plan, clock, out_dir)
        except Exception as error:  # noqa: BLE001 (report what failed and go on with the next model)
            result["train"][name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
            print(f"{name} failed: {result['train'][name]['error']}", flush=True)
            traceback.print_exc()
            free(device)
        result["seconds"] = clock.elapsed()
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")  # partial results survive a timeout
    rows, targets = summarise(result)
    result["targets"] = targets
    result["seconds"] = clock.elapsed()
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result, rows, targets)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
