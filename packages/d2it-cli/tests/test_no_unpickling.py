"""Nothing is unpickled: no `torch.load` without weights_only=True, and planted malicious pickles never run."""

import ast
from pathlib import Path

import pytest
import torch

import d2it.weights
from d2it.errors import D2itError

PACKAGES = Path(__file__).resolve().parents[2]


class Boom:
    """Unpickling this creates a marker file: proof that code from a weights file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, base, name


def test_every_torch_load_in_the_packages_is_weights_only():
    offenders, checked = [], 0
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, base, name in _calls(tree):
            where = f"{path.relative_to(PACKAGES)}:{node.lineno}"
            if name == "load_state_dict_from_url" or (base == "hub" and name == "load"):
                offenders.append(f"{where} {name} unpickles")
            if base == "torch" and name == "load":
                checked += 1
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    offenders.append(f"{where} torch.load without weights_only=True")
    assert checked >= 3, "the scan found too few torch.load calls; has the layout changed?"
    assert not offenders, "\n".join(offenders)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A torch hub cache (and lpips weights path) where every file we read is a malicious pickle."""
    import torchvision.models as tvm
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    hub = tmp_path / "hub"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    marker = tmp_path / "pwned"
    urls = [
        tvm.VGG16_Weights.IMAGENET1K_V1.url,
        tvm.AlexNet_Weights.IMAGENET1K_V1.url,
        tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
        URL_INCEPTION_V3,
    ]
    paths = [d2it.weights.hub_cache_path(u) for u in urls]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features.0.weight": Boom(marker)}, p)
    lin = tmp_path / "lpips-lin.pth"
    torch.save({"lin0.model.1.weight": Boom(marker)}, lin)
    monkeypatch.setattr(d2it.weights, "lpips_linear_path", lambda net: lin)
    yield {"marker": marker, "hub": paths, "lin": lin}
    torch.hub.set_dir(old)
    assert not marker.exists(), "code from a planted pickle ran"


def test_planted_pickle_in_the_hub_cache_does_not_run_for_the_dvae_lpips(planted):
    from d2it_vae.losses import _lpips_template, make_lpips

    _lpips_template.cache_clear()
    with pytest.raises(D2itError, match="not a plain state dict"):
        make_lpips()
    assert not planted["marker"].exists()


@pytest.mark.parametrize("net", ["vgg", "alex", "squeeze"])
def test_planted_pickle_does_not_run_for_the_lpips_metric(planted, net):
    from d2it_cli.evaluation.metrics import LPIPS, LpipsConfig

    with pytest.raises(D2itError, match="not a plain state dict"):
        LPIPS(LpipsConfig(net=net))
    assert not planted["marker"].exists()


def test_planted_pickle_as_lpips_linear_layers_does_not_run(planted):
    with pytest.raises(D2itError, match="not a plain state dict"):
        d2it.weights.lpips_network("vgg", trunk=None, linear=True)


def test_planted_pickle_as_inception_weights_does_not_run(planted):
    from d2it_cli.evaluation.extractor import INCEPTION, Extractor

    with pytest.raises(D2itError, match="not a plain state dict"):
        Extractor(INCEPTION, ["2048"])  # torch-fidelity's cache file
    with pytest.raises(D2itError, match="not a plain state dict"):
        Extractor(INCEPTION, ["2048"], weights=planted["hub"][-1])  # the same file passed explicitly


def test_planted_pickle_through_the_command_line(planted, tiny_system, tmp_path):
    from d2it_cli.main import main

    for argv in (
        ["eval", "recon", "--system", tiny_system, "--data", "synthetic:4", "--metrics", "lpips", "--batch", "4"],
        [
            "train",
            "dvae",
            "--system",
            tiny_system,
            "--data",
            "synthetic:4",
            "--steps",
            "1",
            "--batch",
            "2",
            "--run-dir",
            tmp_path / "run",
            "--quiet",
        ],
    ):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        assert info.value.code == 2
    assert not planted["marker"].exists()


def test_plain_trunk_in_the_hub_cache_is_used(tmp_path, monkeypatch):
    """The offline path: a (random, test-written) VGG16 file in torch.hub's cache is loaded as tensors."""
    from d2it_vae.losses import VGG16_URL, _lpips_template, make_lpips

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        rand = make_lpips(pnet_rand=True)
        state = {}
        for _, stage in rand.net.named_children():
            for index, layer in stage.named_children():
                for pname, tensor in layer.named_parameters():
                    state[f"features.{index}.{pname}"] = torch.randn_like(tensor)
        path = d2it.weights.hub_cache_path(VGG16_URL)
        path.parent.mkdir(parents=True)
        torch.save(state, path)
        _lpips_template.cache_clear()
        loaded = make_lpips()
        assert torch.equal(loaded.net.slice1[0].weight, state["features.0.weight"])
    finally:
        torch.hub.set_dir(old)
        _lpips_template.cache_clear()
