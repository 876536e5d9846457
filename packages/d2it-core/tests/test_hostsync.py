"""The host-sync op log sees on fake CUDA (and meta) what CUDA's sync-debug mode warns about."""

import pytest
import torch

from d2it.hostsync import HostTransfers, cuda_autocast, fake_cuda

# each would sync on CUDA: a host-to-device copy or a device read
SYNCING = {
    "tensor from a list": lambda x: torch.tensor([1, 2], device=x.device),
    "CPU tensor moved over": lambda x: torch.arange(3, device="cpu").to(x.device),
    "CPU index tensor": lambda x: x[torch.tensor([0, 1], device="cpu")],
    "CPU index in index_select": lambda x: x.index_select(0, torch.tensor([0, 1], device="cpu")),
    "item": lambda x: x.sum().item(),
    "tolist": lambda x: x.tolist(),
    "bool mask": lambda x: x[x > 0],
    "nonzero": lambda x: x.nonzero(),
    "repeat_interleave without output_size": lambda x: torch.repeat_interleave(
        torch.arange(3, device=x.device), torch.ones(3, dtype=torch.long, device=x.device)
    ),
    "to the host": lambda x: x.cpu(),
}
# none of these syncs
CLEAN = {
    "Python scalars": lambda x: (x + 1) * 2.0,
    "0-d CPU tensor in a pointwise op": lambda x: x * torch.tensor(2.0, device="cpu"),
    "factories on the device": lambda x: torch.arange(3, device=x.device) + torch.zeros(3, device=x.device),
    "where with a scalar": lambda x: torch.where(x > 0, x, 0.0),
    "repeat_interleave with output_size": lambda x: torch.repeat_interleave(
        torch.arange(3, device=x.device), torch.ones(3, dtype=torch.long, device=x.device), output_size=3
    ),
    "int repeats": lambda x: x.repeat_interleave(2, dim=0),
}


def _events(fn, device):
    x = torch.randn(3, 4, device=device)
    with HostTransfers() as log:
        try:
            fn(x)
        except Exception:  # noqa: BLE001 (data-dependent ops raise on fake and meta tensors, after being logged)
            pass
    return log.events


@pytest.mark.parametrize("name", SYNCING)
def test_host_syncs_are_seen_on_fake_cuda(name):
    with fake_cuda():
        assert len(_events(SYNCING[name], "cuda")) == 1


@pytest.mark.parametrize("name", [n for n in SYNCING if n != "tensor from a list"])
def test_host_syncs_are_seen_on_meta(name):
    # torch.tensor(data, device="meta") is built below the dispatch modes, unseen: forward passes use fake CUDA
    assert len(_events(SYNCING[name], "meta")) == 1


@pytest.mark.parametrize("name", CLEAN)
def test_device_only_ops_are_not_syncs(name):
    with fake_cuda():
        assert _events(CLEAN[name], "cuda") == []
    assert _events(CLEAN[name], "meta") == []


def test_cuda_autocast_runs_on_fake_cuda_and_restores_the_state():
    before = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    with fake_cuda():
        a, b = torch.randn(4, 4), torch.randn(4, 4)
        assert a.device.type == "cuda"
        with cuda_autocast(torch.bfloat16):
            assert (a @ b).dtype == torch.bfloat16
        assert (a @ b).dtype == torch.float32
    assert (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")) == before
