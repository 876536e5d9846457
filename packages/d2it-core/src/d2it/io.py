"""Checkpoint I/O: atomic writes, safetensors weights and weights-only training state."""

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from d2it.errors import CheckpointError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it replaces `path` in one step (mode 0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; written files get the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def clean_temporary_files(folder):
    """Remove the hidden `.NAME.XXXX.tmp` files `atomic_path` leaves behind when a process is killed."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            try:
                p.unlink()
            except FileNotFoundError:  # another cleaner was first
                pass


def atomic_write_text(path, text: str):
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_safetensors(tensors: dict, path, metadata: dict | None = None):
    """Save tensors (contiguous, unshared copies) with string metadata, atomically."""
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def load_safetensors(path, device="cpu") -> tuple[dict, dict]:
    """Load (tensors, metadata) onto a device; a missing or corrupt file raises CheckpointError."""
    path, device = Path(path), str(device)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path), device=device), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"weights file {path} is not a readable safetensors file ({exc})") from None


def save_state(obj, path):
    """Save training state (tensors, numbers, strings, lists, dicts) atomically with torch.save."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(path):
    """Load training state with weights_only=True: nothing is unpickled beyond plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        if "weights_only" in first or "Weights only" in first:  # torch's long advice is not for this file
            first = "it is damaged or holds pickled Python objects"
        raise CheckpointError(f"training state {path} cannot be read ({type(exc).__name__}: {first})") from None


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict) -> str:
    """Hex SHA-256 of a state dict's names, dtypes, shapes and values (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # reshape first: a 0-dim tensor cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def upgrade_state(module: torch.nn.Module, tensors: dict) -> dict:
    """A copy of `tensors` that submodules with `upgrade_state_dict(state, prefix)` adapted from older layouts.

    A module that gained a tensor (an identity-initialised layer) or changed one compatibly fills
    or converts the old file's entries here, so weights written before still load strictly.
    """
    tensors = dict(tensors)
    for name, sub in module.named_modules():
        hook = getattr(sub, "upgrade_state_dict", None)
        if callable(hook):
            hook(tensors, f"{name}." if name else "")
    return tensors


def load_into(module: torch.nn.Module, tensors: dict, where: str):
    """Load `tensors` into `module` strictly (after `upgrade_state`); a mismatch names the first differing tensor."""
    tensors = upgrade_state(module, tensors)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{where} lacks tensor {missing[0]!r} that the model built from d2it.json has")
    if extra:
        raise CheckpointError(f"{where} has tensor {extra[0]!r} that the model built from d2it.json lacks")
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(got.shape)} but the model built from "
                f"d2it.json expects {tuple(want.shape)}"
            )
    module.load_state_dict(tensors, strict=True)
