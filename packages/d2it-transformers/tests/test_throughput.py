"""GPU-throughput paths checked on the CPU: regional compile without graph breaks, one host sync per sparse layout."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from d2it_transformers import sparse
from d2it_transformers.dit import DiT, DiTBlock
from d2it_transformers.regional import compile_blocks, compiled_regions, uncompile

CASES = [("window4", 8, 2, {}), ("window8", 12, 2, {}), ("window2", 16, 3, {"patch_size": 4}), ("global", 8, 2, {})]


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("refine", ["window4", "global", "window4-sparse"])
def test_transformer_blocks_compile_without_graph_breaks(content, inputs, refine):
    model = _randomise(content(refine)).train()
    x, t, y, gm = inputs(model)
    c = torch.randn(x.shape[0], 32)
    blocks = [*model.backbone.blocks, *model.refiner.blocks]
    tokens = {id(b): torch.randn(x.shape[0], 16, 32) for b in model.backbone.blocks}
    for block in blocks:
        h = tokens.get(id(block), torch.randn(x.shape[0], 64, 32))  # RefineNet blocks see the 8x8 cell grid
        if refine.endswith("sparse"):
            continue  # the sparse RefineNet calls its blocks' parts on packed tokens, checked below
        report = torch._dynamo.explain(block)(h, c)
        assert report.graph_break_count == 0, report.break_reasons
        assert report.graph_count == 1
    if refine.endswith("sparse"):
        layout = model.refiner.layout(gm)
        h = torch.randn(layout.sample.numel(), 32)
        block = model.refiner.blocks[0]
        mod = block.adaLN_modulation(c)
        for part, args in (
            (sparse.attention_input, (block, h, mod, layout.sample)),
            (sparse.block_output, (block, h, torch.randn_like(h), mod, layout.sample)),
        ):
            report = torch._dynamo.explain(part)(*args)
            assert report.graph_break_count == 0, report.break_reasons


def test_dit_block_has_no_graph_breaks_with_checkpointing_and_bf16_autocast():
    block = _randomise(DiTBlock(32, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = torch._dynamo.explain(block)(torch.randn(2, 16, 32), torch.randn(2, 32))
    assert report.graph_break_count == 0, report.break_reasons


@pytest.mark.parametrize("refine", ["window4", "window4-sparse", "none"])
def test_compiled_blocks_compute_the_same_forward_and_gradients(content, inputs, refine):
    model = _randomise(content(refine)).train()
    args = inputs(model, seed=1)

    def run():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # label dropout draws alike
        out = model(*args)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = run()
    keys = model.state_dict().keys()
    n = compile_blocks(model, backend="aot_eager")
    assert n == len(model.backbone.blocks) + (len(model.refiner.blocks) if model.refiner is not None else 0)
    assert model.state_dict().keys() == keys  # checkpoints stay interchangeable
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # no fallback to eager
        got, grads = run()
    assert compiled_regions(model) == n
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    uncompile(model)
    assert compiled_regions(model) == 0


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no compiler on this machine")


def test_a_block_that_fails_to_compile_runs_eagerly_with_one_warning():
    torch.manual_seed(0)
    model = _randomise(DiT(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)).eval()
    x, t, y = model.example_inputs(2)
    with torch.no_grad():
        ref = model(x, t, y)
        compile_blocks(model, backend=_broken_backend)
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            got = model(x, t, y)
    torch.testing.assert_close(got, ref)


def _counting_host_list(monkeypatch):
    calls = []
    real = sparse.host_list

    def counted(counts):
        calls.append(counts.device.type)
        return real(counts)

    monkeypatch.setattr(sparse, "host_list", counted)
    return calls


@pytest.mark.parametrize(("refine", "size", "grains", "options"), CASES)
def test_sparse_forward_runs_on_the_meta_device_with_one_host_copy(content, inputs, monkeypatch, refine, size,
                                                                   grains, options):  # fmt: skip
    """On the meta device every data-dependent op (nonzero, item, bincount, ...) raises; only `host_list` may read."""
    model = _randomise(content(f"{refine}-sparse", input_size=size, grains=grains, **options)).eval()
    x, t, y, gm = inputs(model, batch=3)
    lengths = []
    real = sparse.host_list
    monkeypatch.setattr(sparse, "host_list", lambda counts: lengths.append(real(counts)) or lengths[-1])
    with torch.no_grad():
        ref = model(x, t, y, gm)
    assert len(lengths) == 1
    meta = model.to("meta")
    reads = []
    monkeypatch.setattr(sparse, "host_list", lambda counts: reads.append(counts.device.type) or lengths[0])
    with torch.no_grad():
        out = meta(*(a.to("meta") for a in (x, t, y, gm)))
    assert reads == ["meta"]  # the one host copy per forward, everything else stayed on the device
    assert out.shape == ref.shape and out.device.type == "meta"


def test_sampling_reuses_the_layout_of_an_unchanged_grain_map(content, inputs, monkeypatch):
    from d2it.system import SystemRecord
    from d2it_sampling.guidance import conditioned_model
    from d2it_sampling.pipeline import make_diffusion
    from d2it_sampling.samplers import sample_ddpm

    model = _randomise(content("window4-sparse")).eval()
    calls = _counting_host_list(monkeypatch)
    x, _, y, gm = inputs(model)
    diffusion = make_diffusion(SystemRecord(backbone="dit-s", refine="window4-sparse"), 5)
    with torch.no_grad():
        sample_ddpm(conditioned_model(model, y, gm, cfg_scale=2.0), diffusion, x, grain_map=gm, progress=False)
    assert calls == ["cpu"]  # one layout for 5 guided steps
    gm2 = gm.clone()
    with torch.no_grad():
        first = model(x, torch.zeros(2, dtype=torch.long), y, gm2)
        gm2[0, 0, 0] = 1 - gm2[0, 0, 0]  # changed in place: the cached layout must not be reused
        second = model(x, torch.zeros(2, dtype=torch.long), y, gm2)
    assert len(calls) == 3
    assert not torch.equal(first, second)
    fresh = model.refiner.layout(gm2.clone())
    torch.testing.assert_close(model.refiner.layout(gm2).cells, fresh.cells)


def test_token_modulation_adds_one_to_the_scale_chunks():
    mod = torch.randn(2, 12)
    sample = torch.tensor([1, 0, 1])
    chunks = sparse.token_modulation(mod, 4, (1, 3), sample)
    want = mod.view(2, 4, 3).clone()
    want[:, [1, 3]] += 1
    for i, chunk in enumerate(chunks):
        torch.testing.assert_close(chunk, want[:, i][sample])


class _OpLog(TorchDispatchMode):
    """Records every aten op with its keyword arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), kwargs or {}))
        return func(*args, **(kwargs or {}))


# ops that read device data on the host (a sync on CUDA) or copy host data to the device
HOST_OPS = {
    "aten.lift_fresh.default",
    "aten.nonzero.default",
    "aten._local_scalar_dense.default",
    "aten.bincount.default",
    "aten.masked_select.default",
    "aten.item.default",
    "aten.is_nonzero.default",
}


@pytest.mark.parametrize("refine", ["window4-sparse", "window8-sparse", "global-sparse"])
def test_sparse_forward_and_backward_make_no_other_host_transfers(content, inputs, refine):
    model = _randomise(content(refine, input_size=12 if refine == "window8-sparse" else 8)).train()
    x, t, y, gm = inputs(model)
    with _OpLog() as log:
        model(x, t, y, gm.clone()).square().mean().backward()
    ops = {name for name, _ in log.calls}
    assert not ops & HOST_OPS, ops & HOST_OPS
    for name, kwargs in log.calls:
        if name.startswith("aten.repeat_interleave.Tensor"):
            assert kwargs.get("output_size") is not None  # else the output size is read from the device
