"""Nothing is unpickled and no cached hub code runs: one loader (`d2it.weights`) reads every pretrained file.

A static scan of every module under packages/*/src refuses the calls that unpickle or import code
(`torch.load` without weights_only=True, torch.hub repositories, pickle) and the third-party calls
that would load a checkpoint on our behalf; behavioural tests plant payloads exactly where torch.hub,
torchvision and torch-fidelity look and run every `d2it eval` path over them.
"""

import ast
import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

import d2it.weights
from d2it.errors import D2itError

PACKAGES = Path(__file__).resolve().parents[2]
ONE_LOADER = "d2it-core/src/d2it/weights.py"
TORCH_LOAD_OK = {ONE_LOADER, "d2it-core/src/d2it/io.py"}  # io.py: our own training state, weights_only too
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
# d2it's own `from_pretrained`: a system folder's safetensors through d2it.system.load, never a pickle
OWN_FROM_PRETRAINED = {"d2it.system.System.from_pretrained", "d2it.System.from_pretrained"}
FIDELITY_REFUSED = {"calculate_metrics", "create_sample_similarity", "torchvision_load_pretrained_vgg16"}


# ------------------------------------------------------------------------------------------- the scan
def _imports(tree) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (absolute imports only)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _qualified(func, imports) -> str:
    """`torch.hub.load` for `hub.load` after `from torch import hub`; the attribute alone when not a name chain."""
    parts, node = [], func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ".".join(reversed(parts))
    parts.append(imports.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call, name):
    """The value node of keyword `name`, or None."""
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def violations(source: str, rel: str) -> list[str]:
    """Every call in `source` (file `rel` under packages/) that could unpickle or run code from a file."""
    tree = ast.parse(source)
    imports, found = _imports(tree), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        q = _qualified(node.func, imports)
        last, top = q.rsplit(".", 1)[-1], q.split(".")[0]

        def bad(why, node=node, q=q):
            found.append(f"{rel}:{node.lineno} {q}: {why}")

        if q == "torch.load":
            if not _is(_keyword(node, "weights_only"), True):
                bad("torch.load without weights_only=True")
            if rel not in TORCH_LOAD_OK:
                bad("torch.load outside d2it/weights.py, the one loader")
        if q in ("torch.hub.load", "torch.jit.load") or q.endswith("hub.load"):
            bad("imports a torch.hub repository's code or a TorchScript archive")
        if last == "load_state_dict_from_url" or q == "torch.utils.model_zoo.load_url":
            bad("torch.hub loads the file with weights_only=False")
        if top in PICKLERS and last in ("load", "loads", "Unpickler", "open"):
            bad("unpickles")
        if last == "read_pickle":
            bad("unpickles")
        allow_pickle = _keyword(node, "allow_pickle")
        if q == "numpy.load" and not (allow_pickle is None or _is(allow_pickle, False)):
            bad("numpy.load may unpickle")
        if top == "lpips" and last == "LPIPS":
            if not (_is(_keyword(node, "pretrained"), False) and _is(_keyword(node, "pnet_rand"), True)):
                bad("lpips loads its own weights unless pretrained=False, pnet_rand=True")
            if rel != ONE_LOADER:
                bad("lpips networks are built in d2it/weights.py")
        if top == "torch_fidelity" and (last == "create_feature_extractor" or last.startswith("FeatureExtractor")):
            if rel != ONE_LOADER:
                bad("torch-fidelity extractors are built in d2it/weights.py from plain tensors")
        if top == "torch_fidelity" and last in FIDELITY_REFUSED:
            bad("torch-fidelity would load pretrained weights itself")
        if top == "torchvision" and last == "get_state_dict":
            bad("torchvision loads the file with torch.hub")
        if top == "torchvision" and ".models" in q:
            weights = _keyword(node, "weights")
            if weights is not None and not _is(weights, None):
                bad("torchvision loads pretrained weights itself")
        pretrained = _keyword(node, "pretrained")
        if pretrained is not None and not _is(pretrained, False):
            bad("the library loads pretrained weights itself")
        own = q in OWN_FROM_PRETRAINED
        if last == "from_pretrained" and not own and not _is(_keyword(node, "use_safetensors"), True):
            bad("from_pretrained without use_safetensors=True may unpickle a .bin file")
    return found


def _sources():
    files = sorted(PACKAGES.glob("*/src/**/*.py"))
    assert len(files) > 50, "the scan found too few modules; has the layout changed?"
    for path in files:
        yield path.relative_to(PACKAGES).as_posix(), path.read_text()


def test_no_module_unpickles_or_loads_hub_code():
    offenders = [v for rel, text in _sources() for v in violations(text, rel)]
    assert not offenders, "\n".join(offenders)


def test_the_one_loader_is_where_the_scan_expects_it():
    tree = ast.parse((PACKAGES / ONE_LOADER).read_text())
    calls = {_qualified(n.func, _imports(tree)) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"torch.load", "torch_fidelity.utils.create_feature_extractor", "lpips.LPIPS"} <= calls


OUTSIDE = "d2it-cli/src/d2it_cli/x.py"
CAUGHT = [
    ("import torch\ntorch.load(p)", "weights_only"),
    ("import torch\ntorch.load(p, weights_only=False)", "weights_only"),
    ("import torch\ntorch.load(p, weights_only=True)", "one loader"),
    ("from torch import load\nload(p, weights_only=True)", "one loader"),
    ("import torch\ntorch.hub.load('facebookresearch/dinov2', 'dinov2_vits14')", "torch.hub repository"),
    ("from torch import hub\nhub.load(repo, 'm')", "torch.hub repository"),
    ("import torch\ntorch.jit.load(p)", "TorchScript"),
    ("from torch.hub import load_state_dict_from_url\nload_state_dict_from_url(u)", "weights_only=False"),
    ("import pickle\npickle.load(f)", "unpickles"),
    ("import pickle as pk\npk.loads(b)", "unpickles"),
    ("import joblib\njoblib.load(p)", "unpickles"),
    ("import pandas as pd\npd.read_pickle(p)", "unpickles"),
    ("import numpy as np\nnp.load(p, allow_pickle=True)", "numpy.load"),
    ("import lpips\nlpips.LPIPS(net='vgg')", "pretrained=False"),
    ("import lpips\nlpips.LPIPS(net='vgg', pretrained=False, pnet_rand=True)", "d2it/weights.py"),
    ("from torch_fidelity.utils import create_feature_extractor as c\nc('vgg16', ['fc2'])", "plain tensors"),
    ("from torch_fidelity import feature_extractor_vgg16 as f\nf.FeatureExtractorVGG16('v', [])", "plain tensors"),
    ("import torch_fidelity\ntorch_fidelity.calculate_metrics(input1=a, input2=b)", "itself"),
    ("import torchvision.models as tvm\ntvm.vgg16(weights=tvm.VGG16_Weights.IMAGENET1K_V1)", "itself"),
    ("import torchvision.models as tvm\ntvm.VGG16_Weights.IMAGENET1K_V1.get_state_dict()", "torch.hub"),
    ("import torchvision\ntorchvision.models.vgg16(pretrained=True)", "itself"),
    ("import timm\ntimm.create_model('vit', pretrained=True)", "itself"),
    ("from diffusers import AutoencoderKL\nAutoencoderKL.from_pretrained(p)", "use_safetensors"),
]  # fmt: skip
PASSED = [
    (ONE_LOADER, "import torch\ntorch.load(p, map_location='cpu', weights_only=True)"),
    (ONE_LOADER, "import lpips\nlpips.LPIPS(net=n, pretrained=False, pnet_rand=True, verbose=False)"),
    (OUTSIDE, "import numpy as np\nnp.load(p, allow_pickle=False)"),
    (OUTSIDE, "import torchvision.models as tvm\ntvm.vgg16(weights=None)"),
    (OUTSIDE, "from diffusers import AutoencoderKL\nAutoencoderKL.from_pretrained(p, use_safetensors=True)"),
    (OUTSIDE, "import d2it\nd2it.System.from_pretrained(p)"),
    (OUTSIDE, "from d2it.system import System\nSystem.from_pretrained(p)"),
]


@pytest.mark.parametrize("source,why", CAUGHT, ids=[s.splitlines()[-1][:40] for s, _ in CAUGHT])
def test_the_scan_catches(source, why):
    found = violations(source, OUTSIDE)
    assert found and any(why in f for f in found), found


@pytest.mark.parametrize("rel,source", PASSED, ids=[s.splitlines()[-1][:40] for _, s in PASSED])
def test_the_scan_passes(rel, source):
    assert violations(source, rel) == []


# --------------------------------------------------------------------------------------- the payloads
class Boom:
    """Unpickling this creates a marker file: proof that code from a weights file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


PROBED = ["inception-v3-compat", "vgg16", "clip-vit-b-32", "dinov2-vit-s-14"]
FIDELITY_NAMES = sorted(
    {n for n, c in FEATURE_EXTRACTORS_REGISTRY.items() if c.__module__.startswith("torch_fidelity.")} | set(PROBED)
)
HUB_REPOS = ["facebookresearch_dinov2_main", "facebookresearch_dinov2_master", "openai_CLIP_main"]


def _clip_files():
    """The file names torch-fidelity gives the CLIP checkpoints it fetches through torch.hub."""
    try:
        from torch_fidelity.feature_extractor_clip import MODEL_METADATA
    except ImportError:  # an older torch-fidelity without CLIP
        return []
    return [f"{name}-{meta['hash']}.pt" for name, meta in MODEL_METADATA.items()]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """TORCH_HOME in tmp with a payload at every file torch.hub, torchvision, torch-fidelity and lpips would read."""
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() follows TORCH_HOME again
    monkeypatch.setenv("D2IT_OFFLINE", "1")
    hub = Path(torch.hub.get_dir())
    assert hub == tmp_path / "torch" / "hub"
    marker = tmp_path / "pwned"
    urls = [
        tvm.VGG16_Weights.IMAGENET1K_V1.url,
        tvm.AlexNet_Weights.IMAGENET1K_V1.url,
        tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
        URL_INCEPTION_V3,
    ]
    files = [d2it.weights.hub_cache_path(u) for u in urls] + [hub / "checkpoints" / f for f in _clip_files()]
    for p in files:
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features.0.weight": Boom(marker)}, p)
    for repo in HUB_REPOS:  # a cached torch.hub repository: importing hubconf.py runs it
        (hub / repo).mkdir(parents=True)
        (hub / repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    lin = tmp_path / "lpips-lin.pth"
    torch.save({"lin0.model.1.weight": Boom(marker)}, lin)
    monkeypatch.setattr(d2it.weights, "lpips_linear_path", lambda net: lin)
    yield {"marker": marker, "hub": files, "inception": files[3], "lin": lin, "tmp": tmp_path}
    assert not marker.exists(), "code from a planted file ran"


def test_the_payloads_are_live(planted):
    """Control: an unrestricted torch.load or torch.hub.load of what is planted does run it."""
    marker = planted["marker"]
    for path in planted["hub"][:1] + [planted["lin"]]:
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    sys.modules.pop("hubconf", None)
    with pytest.raises(RuntimeError, match="Cannot find callable dinov2_vits14"):  # after hubconf.py ran
        torch.hub.load("facebookresearch/dinov2:main", "dinov2_vits14", trust_repo=True)
    sys.modules.pop("hubconf", None)
    assert marker.exists()
    marker.unlink()


def test_planted_pickle_in_the_hub_cache_does_not_run_for_the_dvae_lpips(planted):
    from d2it_vae.losses import _lpips_template, make_lpips

    _lpips_template.cache_clear()
    with pytest.raises(D2itError, match="not a plain state dict"):
        make_lpips()


@pytest.mark.parametrize("net", ["vgg", "alex", "squeeze"])
def test_planted_pickle_does_not_run_for_the_lpips_metric(planted, net):
    from d2it_cli.evaluation.metrics import LPIPS, LpipsConfig

    with pytest.raises(D2itError, match="not a plain state dict"):
        LPIPS(LpipsConfig(net=net))


def test_planted_pickle_as_lpips_linear_layers_does_not_run(planted):
    with pytest.raises(D2itError, match="not a plain state dict"):
        d2it.weights.lpips_network("vgg", trunk=None, linear=True)


def test_planted_pickle_as_inception_weights_does_not_run(planted):
    from d2it_cli.evaluation.extractor import INCEPTION, Extractor

    with pytest.raises(D2itError, match="not a plain state dict"):
        Extractor(INCEPTION, ["2048"])  # torch-fidelity's cache file
    with pytest.raises(D2itError, match="not a plain state dict"):
        Extractor(INCEPTION, ["2048"], weights=planted["inception"])  # the same file passed explicitly


def test_planted_pickle_through_train_dvae(planted, tiny_system):
    code, err = run_d2it("train", "dvae", "--system", tiny_system, "--data", "synthetic:4", "--steps", 1,
                         "--batch", 2, "--run-dir", planted["tmp"] / "run", "--quiet")  # fmt: skip
    one_sentence(code, err, "not a plain state dict")


def test_plain_trunk_in_the_hub_cache_is_used(tmp_path, monkeypatch):
    """The offline path: a (random, test-written) VGG16 file in torch.hub's cache is loaded as tensors."""
    from d2it_vae.losses import VGG16_URL, _lpips_template, make_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
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
        _lpips_template.cache_clear()


def run_d2it(*argv) -> tuple[int, str]:
    """`d2it ARGV` in this process: (exit code, stderr)."""
    from d2it_cli.main import main

    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def one_sentence(code, err, expect: str):
    """Exit 2 and a single `error:` line containing `expect`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and expect in lines[0], err


def _npz(tmp_path, n=4, size=16):
    path = tmp_path / "images.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def _expected_refusal(name) -> str:
    return "not a plain state dict" if name in ("inception-v3-compat", "vgg16") else "is not offered"


@pytest.mark.parametrize("name", FIDELITY_NAMES)
def test_eval_gen_never_runs_a_planted_file(planted, name):
    images = _npz(planted["tmp"])
    code, err = run_d2it("eval", "gen", "--samples", images, "--ref", images, "--metrics", "fid",
                         "--feature-extractor", name)  # fmt: skip
    one_sentence(code, err, _expected_refusal(name))


@pytest.mark.parametrize("name", PROBED)
def test_every_eval_subcommand_never_runs_a_planted_file(planted, name, tiny_system):
    tmp = planted["tmp"]
    images = _npz(tmp, size=32)
    for argv in (
        ["eval", "ref", "--data", images, "--out", tmp / "ref.safetensors"],
        ["eval", "recon", "--system", tiny_system, "--data", "synthetic:2", "--metrics", "rfid", "--batch", 2],
        ["eval", "recon", "--system", tiny_system, "--data", "synthetic:2", "--metrics", "lpips", "--batch", 2],
        ["eval", "sample-and-score", "--system", tiny_system, "--ref", images, "--num", 2, "--steps", 1,
         "--metrics", "fid", "--out", tmp / "sas", "--quiet"],
    ):  # fmt: skip
        code, err = run_d2it(*argv, "--feature-extractor", name)
        lpips = "lpips" in argv
        one_sentence(code, err, "not a plain state dict" if lpips else _expected_refusal(name))


def test_refused_extractors_say_which_are_offered():
    from d2it_cli.evaluation.extractor import extractor_class, offered

    assert {"inception-v3-compat", "vgg16"} <= set(offered())
    assert not any(n.startswith(("clip", "dinov2")) for n in offered())
    with pytest.raises(D2itError, match=r"'clip-vit-b-32' is not offered \(.*TorchScript.*\); valid: .*vgg16"):
        extractor_class("clip-vit-b-32")
    # another test may have registered a tiny extractor with torch-fidelity, so the list may hold more names
    with pytest.raises(D2itError, match=r"'dinov2-vit-s-14' is not offered \(.*torch.hub.*\); valid: .*inception"):
        extractor_class("dinov2-vit-s-14")
    with pytest.raises(D2itError, match=r"unknown feature extractor 'zz'; valid: .*inception-v3-compat"):
        extractor_class("zz")


def test_missing_weights_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("D2IT_OFFLINE", "1")
    monkeypatch.setattr(d2it.weights, "download", lambda url, path: pytest.fail("a test tried to download"))
    images = _npz(tmp_path)
    for name in ("inception-v3-compat", "vgg16"):
        code, err = run_d2it("eval", "gen", "--samples", images, "--ref", images, "--feature-extractor", name)
        one_sentence(code, err, "forbids downloads")
        assert "--inception-weights PATH" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err


@pytest.mark.parametrize("name", ["inception-v3-compat", "vgg16"])
def test_plain_weights_of_the_wrong_network_are_one_sentence(planted, name):
    from d2it_cli.evaluation.extractor import OFFERED

    path = d2it.weights.hub_cache_path(OFFERED[name])
    torch.save({"features.0.weight": torch.zeros(2, 3)}, path)  # plain tensors now, of no known network
    images = _npz(planted["tmp"])
    code, err = run_d2it("eval", "gen", "--samples", images, "--ref", images, "--feature-extractor", name)
    one_sentence(code, err, f"do not fit the {name} feature extractor: it lacks tensor")


def _random_inception_state() -> dict:
    """Random tensors in the Inception layout, from torch-fidelity's module code (its loading switched off)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        with d2it.weights.plain_file({}) as empty:
            module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    torch.manual_seed(0)
    params = {k for k, _ in module.named_parameters()}  # buffers (BatchNorm statistics) keep their defaults
    return {k: torch.randn_like(v) * 0.1 if k in params else v for k, v in module.state_dict().items()}


def test_inception_from_plain_tensors_equals_torch_fidelity(planted):
    """Cache file or --inception-weights (torch or safetensors): torch-fidelity's own network, our loading."""
    from safetensors.torch import save_file
    from torch_fidelity.utils import create_feature_extractor

    from d2it_cli.evaluation.extractor import INCEPTION, Extractor, inception_cache_path

    state = _random_inception_state()
    cached = inception_cache_path()
    torch.save(state, cached)  # replaces the planted pickle
    save_file(state, planted["tmp"] / "inception.safetensors")
    layers = ["2048", "logits_unbiased"]
    theirs = create_feature_extractor(INCEPTION, layers, cuda=False, verbose=False,
                                      feature_extractor_weights_path=str(cached))  # fmt: skip
    expected = theirs.state_dict()
    for weights in (None, planted["tmp"] / "inception.safetensors"):
        ours = Extractor(INCEPTION, layers, weights=weights)
        assert ours.weights_path == (weights or cached) and type(ours.module) is type(theirs)
        assert ours.module.features_list == layers and not ours.module.training
        got = ours.module.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert not ours.describe()["weights_official"]
