"""The one loader of pretrained weights: tensors only, never unpickled, never code from a cache.

Every pretrained file a path of ours touches comes through here: our own and foreign checkpoints,
the LPIPS trunk and linear layers, and torch-fidelity's feature extractors. A file is read as
safetensors or with `torch.load(weights_only=True)`; nothing here imports torch.hub repository code
(`hubconf.py`) or unpickles objects. lpips, torchvision and torch-fidelity would load their weights
themselves with `weights_only=False` (torch.hub's `load_state_dict_from_url`, torch-fidelity's
extractors), so a pickle planted in a cache could run code: we find the files ourselves (torch.hub's
cache, the lpips package's linear layers), read their tensors and hand the tensors to the networks.
A missing file is downloaded with a bounded wait, unless `D2IT_OFFLINE` is set (tests set it).
"""

import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from d2it.errors import CheckpointError

DOWNLOAD_TIMEOUT_S = 30
LPIPS_VERSION = "0.1"
OFFLINE_ENV = "D2IT_OFFLINE"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1


def read_weights_only(path):
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers, nothing else is built."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_plain(path, what: str = "weights file") -> dict:
    """A state dict of plain tensors from a safetensors or torch file; anything else (pickled code too) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        from d2it.io import load_safetensors

        return load_safetensors(path)[0]
    try:
        state = read_weights_only(path)
    except Exception as exc:  # torch raises several types for foreign, truncated or malicious files
        raise CheckpointError(
            f"{what} {path} is not a plain state dict of tensors ({type(exc).__name__}); it was not loaded"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} is not a state dict of tensors")
    return state


@contextmanager
def plain_file(state: dict):
    """A private torch file holding only `state`'s tensors, for a library that takes a path, not tensors."""
    with tempfile.TemporaryDirectory(prefix="d2it-weights-") as tmp:
        path = Path(tmp) / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in state.items()}, path)
        yield path


@contextmanager
def weights_only_loads():
    """Force every `torch.load` inside (a library's own, too) to `weights_only=True` (torch's switch)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def hub_cache_path(url: str) -> Path:
    """Where torch.hub (and so torchvision and torch-fidelity) caches the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def offline() -> bool:
    """True when `D2IT_OFFLINE` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def download(url: str, path: Path):
    """Fetch `url` to `path` with torch.hub (nothing is loaded), failing after a bounded wait without network."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    finally:
        socket.setdefaulttimeout(old)


def hub_file(url: str, what: str = "weights", option: str | None = None) -> Path:
    """The cached file of `url`, downloaded (with a bounded wait) when missing; never unpickled here."""
    path = hub_cache_path(url)
    if path.is_file():
        return path
    local = f" or pass {option} PATH" if option else ""
    if offline():
        raise CheckpointError(
            f"the {what} are not in torch's cache and {OFFLINE_ENV} forbids downloads; "
            f"fetch {url} and put it at {path}{local}"
        )
    try:
        download(url, path)
    except OSError as exc:  # URLError, timeouts and refused connections are OSErrors
        raise CheckpointError(
            f"the {what} are not in torch's cache and cannot be downloaded ({exc}); "
            f"fetch {url} on a machine with internet and put it at {path}{local}"
        ) from None
    return path


def _mismatch(exc: RuntimeError) -> str:
    """The first missing, unexpected or mis-shaped tensor named in torch's `load_state_dict` error."""
    for line in str(exc).splitlines()[1:]:
        line = line.strip().rstrip(".")
        keys = re.findall(r'"([^"]+)"', line)
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        if line.startswith("Missing key") and keys:
            return f"it lacks tensor {keys[0]!r}{more}"
        if line.startswith("Unexpected key") and keys:
            return f"it has unexpected tensor {keys[0]!r}{more}"
        shapes = re.match(r"size mismatch for (\S+): .*torch\.Size\((\[.*?\])\).*torch\.Size\((\[.*?\])\)", line)
        if shapes:
            key, got, need = shapes.groups()
            return f"tensor {key!r} has shape {got}, the network needs {need}"
    return str(exc).strip().splitlines()[0]


def fidelity_extractor(name: str, layers, state: dict | None, where: str = "feature extractor weights"):
    """torch-fidelity's extractor `name` built by its own module code with `state` (plain tensors) as weights.

    torch-fidelity reads a weights path with `torch.load(weights_only=False)`: it is handed a private
    file we wrote from `state` alone, and its loads are forced to weights_only as well. `state=None`
    is for extractors registered by other code, which build themselves.
    """
    from torch_fidelity.utils import create_feature_extractor

    kwargs = {"cuda": False, "verbose": False}
    try:
        with weights_only_loads():
            if state is None:
                return create_feature_extractor(name, list(layers), **kwargs)
            with plain_file(state) as path:
                return create_feature_extractor(name, list(layers), feature_extractor_weights_path=str(path), **kwargs)
    except RuntimeError as exc:
        if "Error(s) in loading state_dict" not in str(exc):
            raise
        raise CheckpointError(f"{where} do not fit the {name} feature extractor: {_mismatch(exc)}") from None


def lpips_linear_path(net: str) -> Path:
    """The linear-layer weights the lpips package ships for trunk `net` (vgg, alex, squeeze)."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"


def load_trunk(model, state: dict, where: str):
    """Copy torchvision `features.<i>.<param>` tensors into an lpips network's trunk slices."""
    for name, stage in model.net.named_children():
        if not name.startswith("slice"):
            continue
        for index, layer in stage.named_children():
            for pname, tensor in layer.named_parameters():
                key = f"features.{index}.{pname}"
                if key not in state:
                    raise CheckpointError(f"{where} lacks tensor {key!r} of the LPIPS trunk")
                if tuple(state[key].shape) != tuple(tensor.shape):
                    raise CheckpointError(
                        f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                        f"the LPIPS trunk needs {tuple(tensor.shape)}"
                    )
                with torch.no_grad():
                    tensor.copy_(state[key])


def lpips_network(net: str = "vgg", trunk=None, linear=True):
    """An lpips.LPIPS built without its own loading: `trunk` is a state dict, a file, or None (random)."""
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecated `pretrained=` inside lpips
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    if trunk is not None:
        state = trunk if isinstance(trunk, dict) else load_plain(trunk, f"{net} trunk weights")
        load_trunk(model, state, str(trunk if not isinstance(trunk, dict) else f"{net} trunk weights"))
    if linear:
        path = lpips_linear_path(net)
        state = load_plain(path, "LPIPS linear-layer weights")
        missing, unexpected = model.load_state_dict(state, strict=False)
        # `lins.N` are aliases of `linN`; the scaling layer is a constant buffer
        if unexpected or any(k.startswith("lin") and not k.startswith("lins.") for k in missing):
            raise CheckpointError(f"LPIPS linear-layer weights {path} do not fit the {net} network")
    return model
