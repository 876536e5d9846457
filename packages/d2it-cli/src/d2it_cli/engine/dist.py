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
