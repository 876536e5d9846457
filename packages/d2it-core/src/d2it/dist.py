"""torch.distributed helpers: one code path for a single process and for `torchrun` (DDP)."""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 outside torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 outside torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0."""
    return rank() == 0


def barrier():
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def init_distributed(device: str | None = None) -> torch.device:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); return this rank's device."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and launched:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if launched and not is_distributed():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def shutdown():
    """Leave the process group if one was joined."""
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def main_first():
    """Run the block on rank 0 first, then on the other ranks (e.g. writing then reading a file)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_mean(values: dict) -> dict:
    """Average float values across ranks (one collective for the whole dict); returns plain floats."""
    keys = sorted(values)
    if not keys:
        return {}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if is_distributed():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = t / world_size()
    return dict(zip(keys, t.cpu().tolist()))


def all_gather_object(obj) -> list:
    """Every rank's `obj` (plain data), in rank order; [obj] in a single process."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across ranks in place (no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def average_gradients(module: torch.nn.Module):
    """Average the gradients of `module` across ranks (for parts trained without a DDP wrapper)."""
    if not is_distributed():
        return
    n = world_size()
    for p in module.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(n)


def broadcast_module(module: torch.nn.Module, src: int = 0):
    """Copy parameters and buffers of `module` from rank `src` to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0):
    """Copy the buffers (not the parameters) of `module` from rank `src` to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in module.buffers():
            dist.broadcast(t.data, src)


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank `src` to every rank and return it."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_true(flag) -> bool:
    """Whether a device bool holds on every rank (one host sync)."""
    value = flag.detach().to(torch.int32).reshape(())
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def min_int(value) -> int:
    """The smallest of an int64 device scalar over all ranks (one host sync)."""
    value = value.detach().reshape(()).clone()
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())
