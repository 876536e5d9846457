"""Host syncs of the sparse paths, counted as CUDA's sync-debug mode would, on fake CUDA and meta tensors.

The one intended sync is the packing's `host_list` (the window lengths); the test patches it to count its
calls and return the lengths a real CPU run computed. Everything else must stay on the device: no
`.item()`, no host-built index or value tensors, no CPU buffers meeting device tensors.
"""

import pytest
import torch

from d2it.hostsync import HostTransfers, cuda_autocast, fake_cuda
from d2it_transformers import sparse

CASES = [("window4", 8, 2, {}), ("window8", 12, 2, {}), ("window2", 16, 3, {"patch_size": 4}), ("global", 8, 2, {})]


class Packing:
    """Stands in for `sparse.host_list`: counts its calls and answers with the real window lengths."""

    def __init__(self, lengths):
        self.lengths, self.calls = lengths, 0

    def __call__(self, counts):
        assert counts.device.type != "cpu"
        self.calls += 1
        return self.lengths


def _lengths(model, args, monkeypatch) -> list[int]:
    seen = []
    real = sparse.host_list
    monkeypatch.setattr(sparse, "host_list", lambda counts: seen.append(real(counts)) or seen[-1])
    with torch.no_grad():
        model(*args)
    return seen[0]


def _to_fake(mode, tensors):
    return [mode.from_tensor(t).to("cuda") for t in tensors]


@pytest.mark.parametrize(("refine", "size", "grains", "options"), CASES)
def test_sparse_training_forward_on_fake_cuda_syncs_once(content, inputs, monkeypatch, refine, size, grains, options):
    """gpu_check's `sparse_forward_syncs` case: bf16 autocast, training mode, a new grain map."""
    kw = dict(input_size=size, grains=grains, **options)
    args = inputs(content(f"{refine}-sparse", **kw), batch=3)
    packing = Packing(_lengths(content(f"{refine}-sparse", **kw).train(), args, monkeypatch))
    monkeypatch.setattr(sparse, "host_list", packing)
    with fake_cuda() as mode:
        model = content(f"{refine}-sparse", **kw).train()
        x, t, y, gm = _to_fake(mode, args)
        with cuda_autocast(torch.bfloat16), HostTransfers() as log:
            out = model(x, t, y, gm.clone())
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16
    assert log.events == [] and packing.calls == 1


@pytest.mark.parametrize(("refine", "size", "grains", "options"), CASES)
def test_sparse_training_step_on_meta_syncs_once(content, inputs, monkeypatch, refine, size, grains, options):
    """Forward and backward (the autograd engine runs meta tensors on the CPU; fake CUDA needs a GPU there)."""
    model = content(f"{refine}-sparse", input_size=size, grains=grains, **options).train()
    args = inputs(model, batch=3)
    packing = Packing(_lengths(model, args, monkeypatch))
    monkeypatch.setattr(sparse, "host_list", packing)
    model.to("meta")
    x, t, y, gm = (a.to("meta") for a in args)
    with HostTransfers() as log:
        model(x, t, y, gm.clone()).float().square().mean().backward()
    assert log.events == [] and packing.calls == 1
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.refiner.parameters())


def test_guided_sampling_steps_with_the_layout_cached_make_no_host_syncs(content, inputs, monkeypatch):
    from d2it.system import SystemRecord
    from d2it_sampling.guidance import conditioned_model
    from d2it_sampling.pipeline import make_diffusion

    args = inputs(content("window4-sparse"), batch=2)
    x, _, y, gm = args
    doubled = (torch.cat([x, x]), torch.zeros(4, dtype=torch.long), torch.cat([y, y]), torch.cat([gm, gm]))
    packing = Packing(_lengths(content("window4-sparse").eval(), doubled, monkeypatch))
    monkeypatch.setattr(sparse, "host_list", packing)
    # the schedule's float64 tables live on the host, copied to the device once (the first step)
    diffusion = make_diffusion(SystemRecord(backbone="dit-s", refine="window4-sparse"), 4)
    with fake_cuda() as mode:
        model = content("window4-sparse").eval()
        x, y, gm = _to_fake(mode, (x, y, gm))
        fn = conditioned_model(model, y, gm, cfg_scale=2.0)
        steps = [torch.full((2,), i, dtype=torch.long) for i in (3, 2)]
        with torch.no_grad(), cuda_autocast(torch.bfloat16):
            with HostTransfers() as first:
                diffusion.p_mean_variance(fn, x, steps[0])  # the first step packs the layout and copies the tables
            assert any("cpu -> cuda" in e for e in first.events)  # the tables: the log sees real host data
            assert packing.calls == 1
            with HostTransfers() as log:
                out = diffusion.p_mean_variance(fn, x, steps[1])
    assert out["mean"].device.type == "cuda"
    assert log.events == [] and packing.calls == 1


def test_host_built_window_lengths_would_be_a_sync():
    """`pad_windows` without the device counts copies the lengths from the host: the log must see it."""
    seqlens = [3, 1, 2]
    with fake_cuda():
        counts = torch.tensor(seqlens)
        with HostTransfers() as log:
            sparse.pad_windows(seqlens, counts.device)
        assert len(log.events) == 1 and "cpu -> cuda" in log.events[0]
        with HostTransfers() as log:
            sparse.pad_windows(seqlens, counts.device, counts)
        assert log.events == []
