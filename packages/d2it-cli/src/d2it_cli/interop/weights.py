"""Reading foreign weight files safely: safetensors, or torch files with `weights_only=True`."""

from pathlib import Path

import torch

from d2it.errors import CheckpointError
from d2it.io import load_safetensors
from d2it.weights import read_weights_only


def read_state_dict(path, *, what: str, nested=("state_dict",)) -> dict:
    """The tensors of a `.safetensors` file or a torch file read with `weights_only=True` (never unpickled).

    A torch file holding a dict with one of the `nested` keys (e.g. LDM's {"state_dict": ...}) is
    unwrapped; non-tensor entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist")
    if path.suffix == ".safetensors":
        tensors, _ = load_safetensors(path)
        return tensors
    try:
        state = read_weights_only(path)
    except Exception as exc:  # torch raises several types for pickled objects and foreign files
        raise CheckpointError(
            f"{path} cannot be read as {what} with weights_only=True ({type(exc).__name__}): it is not a torch "
            "state dict, or it pickles Python objects (save its tensors as a plain state dict first)"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of {what}")
    for key in nested:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} has no tensors; expected {what}")
    return tensors


def require(tensors: dict, key: str, path, what: str) -> torch.Tensor:
    """tensors[key], or a CheckpointError saying the file is not `what`."""
    if key not in tensors:
        raise CheckpointError(f"{path} is not {what}: it has no tensor {key!r}")
    return tensors[key]
