"""Pretrained weights read without unpickling: every file goes through `torch.load(weights_only=True)`.

lpips, torchvision and torch-fidelity load their weights with `weights_only=False` (torch.hub's
`load_state_dict_from_url`, torch-fidelity's extractors), so a pickle planted in a cache could run
code. We find the files ourselves (torch.hub's cache, the lpips package's linear layers), load
them as plain tensors and hand the tensors to the networks.
"""

import socket
from pathlib import Path

import torch

from d2it.errors import CheckpointError

DOWNLOAD_TIMEOUT_S = 30
LPIPS_VERSION = "0.1"


def load_plain(path, what: str = "weights file") -> dict:
    """A state dict of plain tensors from `path`; anything else (pickled code included) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign, truncated or malicious files
        raise CheckpointError(
            f"{what} {path} is not a plain state dict of tensors ({type(exc).__name__}); it was not loaded"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} is not a state dict of tensors")
    return state


def hub_cache_path(url: str) -> Path:
    """Where torch.hub (and so torchvision and torch-fidelity) caches the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def hub_file(url: str, what: str = "weights") -> Path:
    """The cached file of `url`, downloaded (with a bounded wait) when missing; never unpickled here."""
    path = hub_cache_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except OSError as exc:
        raise CheckpointError(
            f"the {what} are not in torch's cache and cannot be downloaded ({exc}); fetch {url} and put it at {path}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return path


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
