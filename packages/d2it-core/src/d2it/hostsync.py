"""Host syncs seen without a GPU: an op log of what CUDA's sync-debug mode would warn about.

On the CPU every tensor is host memory, so neither a host-to-device copy (`torch.tensor(list, device=...)`,
`.to(device)` of a CPU tensor, a CPU index into a device tensor) nor a device read (`.item()`,
`.tolist()`, `nonzero`) shows. Run the code on fake CUDA tensors (`fake_cuda`, no GPU needed) or on the
meta device, under `HostTransfers`: then each of these is an op with tensors on both sides of the
host/device line, or a data-dependent op, and is recorded. Fake CUDA covers forward passes (CUDA
autocast included, `cuda_autocast`); the autograd engine needs a real GPU for CUDA tensors, so backward
passes run on the meta device.
"""

from contextlib import contextmanager

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# ops that read device data on the host, or whose output shape depends on device data (a read, then)
READS = {
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "nonzero",
    "masked_select",
    "bincount",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
}
COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"}


def _host(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def transfer(func, args, kwargs) -> str | None:
    """What about this op would make CUDA sync with the host (None: nothing), for devices other than the CPU."""
    name = func._overloadpacket.__name__
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    device = [t for t in tensors if not _host(t)]
    host = [t for t in tensors if _host(t)]
    if name in READS and device:
        return f"device read: {func}"
    if name == "repeat_interleave" and device and kwargs.get("output_size") is None:
        return f"device read (the output size): {func} without output_size"
    if name == "_to_copy":
        src, dst = args[0].device, kwargs.get("device") or args[0].device
        if (src.type == "cpu") != (dst.type == "cpu"):
            return f"{src.type} -> {dst.type} copy of {tuple(args[0].shape)}: {func}"
        return None
    if name in COPIES and len(tensors) >= 2:
        dst, src = tensors[0], tensors[1]
        if _host(src) != _host(dst):
            return f"{src.device.type} -> {dst.device.type} copy of {tuple(src.shape)}: {func}"
        return None
    if device and host:
        # a 0-d CPU tensor in a pointwise op is a kernel argument, not a copy (what Python numbers become)
        if torch.Tag.pointwise in func.tags and all(t.dim() == 0 for t in host):
            return None
        return f"CPU tensor {[tuple(t.shape) for t in host]} used with {device[0].device.type} tensors: {func}"
    return None


class HostTransfers(TorchDispatchMode):
    """Records every op that on CUDA would copy between host and device or read device data (a host sync).

    `events` lists them in order. Under fake CUDA, tensors built from Python data (`torch.tensor(...)`)
    are lifted on the CPU first, so their copy to the device shows too (on meta it does not). Data-dependent
    ops raise on fake and meta tensors; they are recorded before the error propagates.
    """

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __enter__(self):
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        event = transfer(func, args, kwargs)
        if event is not None:
            self.events.append(event)
        try:
            return func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException, NotImplementedError, RuntimeError):
            if event is None and any(not _host(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
                self.events.append(f"failed on fake or meta tensors (data-dependent?): {func}")
            raise

    @property
    def count(self) -> int:
        """How many host syncs the recorded ops would make on CUDA."""
        return len(self.events)


@contextmanager
def fake_cuda():
    """Fake CUDA tensors without a GPU: factories default to the fake "cuda" device; yields the FakeTensorMode.

    Fake tensors carry shapes, dtypes and devices but no data: build the model inside, bring real inputs
    in with `mode.from_tensor(t).to("cuda")`. Real (CPU) tensors are accepted as host data: under
    `HostTransfers` their use with device tensors is recorded.
    """
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.device("cuda"):
        yield mode


@contextmanager
def cuda_autocast(dtype=torch.bfloat16):
    """CUDA autocast switched on even without a GPU (torch.autocast refuses then), for fake CUDA tensors."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)
