"""Checkpoint I/O: atomic writes, safetensors weights and weights-only training state.

Every weight file we write or read passes `bad_tensor`: a floating-point tensor holding NaN or
infinity, or a value beyond `MAX_WEIGHT` (no trained network gets there; an optimizer that blew up
does), is refused with the tensor's name, so broken weights never replace good ones and never load.
A write that fails (disk full, read-only, no permission) raises `WriteFailed` naming the file it
was to replace, which is left as it was.
"""

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from d2it.errors import CheckpointError, WriteFailed

TMP_SUFFIX = ".tmp"
MAX_WEIGHT = 1e15  # largest magnitude a stored weight may have


def bad_tensor(tensors: dict) -> str | None:
    """What is wrong with the first floating-point tensor holding NaN, infinity or |x| > MAX_WEIGHT, or None."""
    floats = [(k, v) for k, v in sorted(tensors.items()) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    by_device: dict[torch.device, list] = {}
    for k, v in floats:
        if v.numel():
            by_device.setdefault(v.device, []).append((k, v.detach()))
    peaks = {}
    for group in by_device.values():  # one host sync per device
        values = torch.stack([torch.linalg.vector_norm(v, float("inf")).float() for _, v in group])
        peaks.update(zip([k for k, _ in group], values.cpu().tolist()))
    for name in sorted(peaks):
        peak = peaks[name]
        if peak != peak or peak == float("inf"):
            return f"tensor {name!r} holds NaN or infinite values"
        if peak > MAX_WEIGHT:
            return f"tensor {name!r} holds values of size {peak:.3g}, beyond any trained weight ({MAX_WEIGHT:.0e})"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path, stage: list | None = None):
    """Yield a temporary path next to `path`; on success it replaces `path` in one step (mode 0666 & ~umask).

    stage: the list of a `staged_writes` block; the replacement then waits for the end of that block.
    A failure (disk full, read-only, no permission) raises `WriteFailed` naming `path`, which is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; written files get the usual mode
        if stage is not None:
            stage.append((tmp, path))
            tmp = None
        else:
            os.replace(tmp, path)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(exc, path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staged_writes():
    """A block whose `atomic_path(..., stage=)` writes replace their files together at its end, in order.

    A write that fails inside the block leaves every file as it was (no mix of old and new parts).
    """
    staged: list[tuple[str, Path]] = []
    try:
        yield staged
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise WriteFailed(exc, path) from exc
    finally:
        for tmp, _ in staged:
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


def atomic_write_text(path, text: str, stage: list | None = None):
    """Write text atomically (at the end of a `staged_writes` block when `stage` is its list)."""
    with atomic_path(path, stage) as tmp:
        tmp.write_text(text)


def save_safetensors(tensors: dict, path, metadata: dict | None = None, stage: list | None = None):
    """Save tensors (contiguous, unshared copies) with string metadata, atomically; broken weights are refused.

    stage: the list of a `staged_writes` block, to replace the file only when the whole block succeeded.
    """
    problem = bad_tensor(tensors)
    if problem is not None:
        raise CheckpointError(f"refusing to write {path}: {problem}; the file there was left as it was")
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, stage) as tmp:
        try:
            save_file(clean, str(tmp), metadata=meta)
        except SafetensorError as exc:  # the Rust writer reports I/O errors as text: "... (os error 28)"
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise CheckpointError(f"{path} cannot be written ({exc})") from None
            number = int(code.group(1))
            raise OSError(number, os.strerror(number)) from None


def load_safetensors(path, device="cpu") -> tuple[dict, dict]:
    """Load (tensors, metadata) onto a device; a missing or corrupt file raises CheckpointError."""
    path, device = Path(path), str(device)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"weights file {path} is not a readable safetensors file ({exc})") from None
    problem = bad_tensor(tensors)
    if problem is not None:
        raise CheckpointError(f"weights file {path} is damaged: {problem}")
    return tensors, metadata


def save_state(obj, path):
    """Save training state (tensors, numbers, strings, lists, dicts) atomically with torch.save."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file, so a full disk is an OSError (torch's own writer says less)


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
    problem = bad_tensor(tensors)
    if problem is not None:
        raise CheckpointError(f"{where}: {problem}; these weights cannot be used")
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
