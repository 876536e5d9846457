"""Metric components: thin layers over torch-fidelity and lpips, checked with a tiny random feature extractor."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from PIL import Image
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

import d2it
from d2it.errors import D2itError
from d2it.registry import Registry

TINY = "d2it-test-tiny"


class TinyExtractor(FeatureExtractorBase):
    """A small randomly initialised extractor (16 pooled conv features, 10 logits); never downloads."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if feature_extractor_weights_path:
            self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True))
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x.float() / 255.0, 8)
        h = torch.relu(self.conv(x))
        feat = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        out = {"feat": feat, "logits": self.fc(feat)}
        return tuple(out[k] for k in self.features_list)


def register_tiny():
    """Register the tiny extractor with torch-fidelity once per process."""
    if TINY not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


def make_images(n=40, size=16, shift=0, seed=0) -> np.ndarray:
    """Random smooth-ish uint8 NHWC images, brightened by `shift`."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 150, size=(n, size // 4, size // 4, 3)).repeat(4, 1).repeat(4, 2)
    noise = rng.integers(0, 40, size=(n, size, size, 3))
    return np.clip(base + noise + shift, 0, 255).astype(np.uint8)


def write_pngs(arr: np.ndarray, folder):
    """One PNG per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def registry():
    register_tiny()
    return Registry.from_entry_points()


def settings(**kw):
    from d2it_cli.evaluation.scoring import Settings

    return Settings(**{"extractor": TINY, "batch_size": 16, **kw})


def test_metric_components_registered(registry):
    names = registry.names("metric")
    for n in ("fid", "isc", "kid", "prc", "lpips", "rfid"):
        assert n in names
        assert registry.get("metric", n).dist == "d2it-cli"


def test_fid_of_a_set_with_itself_is_zero(tmp_path, registry):
    from d2it_cli.evaluation.scoring import score

    np.savez(tmp_path / "a.npz", make_images())
    doc = score(str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), ["fid", "prc"], registry, settings())
    assert abs(doc["metrics"]["fid"]) < 1e-3
    assert doc["metrics"]["precision"] == 1.0 and doc["metrics"]["recall"] == 1.0


def test_fid_grows_with_shift(tmp_path, registry):
    from d2it_cli.evaluation.scoring import score

    np.savez(tmp_path / "ref.npz", make_images(seed=1))
    values = []
    for shift in (0, 15, 40, 90):
        np.savez(tmp_path / f"s{shift}.npz", make_images(seed=2, shift=shift))
        doc = score(str(tmp_path / f"s{shift}.npz"), str(tmp_path / "ref.npz"), ["fid"], registry, settings())
        values.append(doc["metrics"]["fid"])
    assert values == sorted(values) and values[-1] > 2 * values[0], values


def test_fid_equals_torch_fidelity(tmp_path, registry):
    from d2it_cli.evaluation.scoring import score

    a = write_pngs(make_images(seed=3), tmp_path / "a")
    b = write_pngs(make_images(seed=4, shift=20), tmp_path / "b")
    sets = ("kid.subset_size=20", "isc.splits=4")
    ours = score(str(a), str(b), ["fid", "kid", "isc"], registry, settings(), sets=sets)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a),
        input2=str(b),
        fid=True,
        kid=True,
        isc=True,
        feature_extractor=TINY,
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=16,
        save_cpu_ram=True,
        kid_subset_size=20,
        isc_splits=4,
    )
    assert ours["metrics"]["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6, abs=1e-9)
    assert ours["metrics"]["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9)
    assert ours["metrics"]["isc"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)


def test_npz_and_png_give_identical_results(tmp_path, registry):
    from d2it_cli.evaluation.scoring import score

    arr, ref = make_images(seed=5), make_images(seed=6)
    np.savez(tmp_path / "s.npz", arr)
    np.savez(tmp_path / "r.npz", ref)
    folder = write_pngs(arr, tmp_path / "s")
    one = score(str(tmp_path / "s.npz"), str(tmp_path / "r.npz"), ["fid", "prc"], registry, settings())
    two = score(str(folder), str(tmp_path / "r.npz"), ["fid", "prc"], registry, settings())
    assert one["metrics"] == two["metrics"]
    assert one["samples"]["pixel_sha256"] == two["samples"]["pixel_sha256"]


def test_reference_statistics_round_trip(tmp_path, registry):
    from d2it_cli.evaluation.scoring import reference_stats, score

    np.savez(tmp_path / "r.npz", make_images(seed=7))
    np.savez(tmp_path / "s.npz", make_images(seed=8, shift=10))
    meta = reference_stats(str(tmp_path / "r.npz"), tmp_path / "r.safetensors", settings())
    assert meta["count"] == 40 and meta["image_size"] == [16, 16] and meta["layers"] == ["feat"]
    direct = score(str(tmp_path / "s.npz"), str(tmp_path / "r.npz"), ["fid", "kid"], registry, settings())
    cached = score(str(tmp_path / "s.npz"), str(tmp_path / "r.safetensors"), ["fid", "kid"], registry, settings())
    assert cached["metrics"] == direct["metrics"]
    assert cached["reference"]["source"]["pixel_sha256"] == direct["reference"]["pixel_sha256"]


def test_adm_reference_statistics_are_used_for_fid(tmp_path, registry, monkeypatch):
    from d2it_cli.evaluation import scoring

    monkeypatch.setattr(scoring, "INCEPTION", TINY)
    monkeypatch.setattr(scoring, "ADM_LAYER", "feat")
    ref = make_images(seed=9)
    np.savez(tmp_path / "s.npz", ref)
    np.savez(tmp_path / "plain.npz", ref)
    mu, sigma = np.zeros(16), np.eye(16)
    np.savez(tmp_path / "adm.npz", arr_0=ref, mu=mu, sigma=sigma)
    plain = scoring.score(str(tmp_path / "s.npz"), str(tmp_path / "plain.npz"), ["fid"], registry, settings())
    adm = scoring.score(str(tmp_path / "s.npz"), str(tmp_path / "adm.npz"), ["fid"], registry, settings())
    assert abs(plain["metrics"]["fid"]) < 1e-3 and adm["metrics"]["fid"] > 1e-2
    assert "ADM" in adm["reference"]["fid_statistics"]


def test_isc_kid_prc_values(registry):
    from d2it_cli.evaluation.metrics import FeatureSet

    g = torch.Generator().manual_seed(0)
    x = FeatureSet({"feat": torch.randn(50, 4, generator=g), "logits": torch.randn(50, 5, generator=g)})
    far = FeatureSet({"feat": torch.randn(50, 4, generator=g) + 10})
    isc = registry.create("metric", "isc", {"splits": 5})(x, None, "logits", 0)
    assert 1.0 <= isc["isc"] <= 5.0
    kid = registry.create("metric", "kid", {"subset_size": 20})
    assert abs(kid(x, x, "feat", 0)["kid"]) < kid(x, far, "feat", 0)["kid"]
    prc = registry.create("metric", "prc")(x, far, "feat", 0)
    assert prc["precision"] == 0.0 and prc["recall"] == 0.0


def test_missing_inception_weights_offline(tmp_path, monkeypatch):
    import d2it.weights
    from d2it_cli.evaluation import extractor

    def no_network(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(d2it.weights, "download", no_network)
    monkeypatch.delenv("D2IT_OFFLINE", raising=False)
    with pytest.raises(D2itError) as err:
        extractor.load_weights(extractor.INCEPTION)
    msg = str(err.value)
    assert extractor.URL_INCEPTION_V3 in msg and "--inception-weights" in msg and str(tmp_path / "hub") in msg
    assert "network is unreachable" in msg
    monkeypatch.setenv("D2IT_OFFLINE", "1")  # offline: no download is tried
    monkeypatch.setattr(d2it.weights, "download", lambda url, dst: pytest.fail("downloaded while offline"))
    with pytest.raises(D2itError, match="D2IT_OFFLINE forbids downloads.*--inception-weights"):
        extractor.load_weights(extractor.INCEPTION)
    with pytest.raises(D2itError, match="does not exist"):
        extractor.load_weights(extractor.INCEPTION, tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(D2itError, match="plain state dict"):
        extractor.load_weights(extractor.INCEPTION, tmp_path / "bad.pth")


def test_extractor_weights_that_do_not_fit_are_one_sentence(tmp_path):
    from d2it_cli.evaluation.extractor import Extractor

    register_tiny()
    state = TinyExtractor(TINY, ["feat"]).state_dict()
    state["fc.weight"] = torch.zeros(3, 16)
    torch.save(state, tmp_path / "shape.pt")
    expect = rf"weights {tmp_path / 'shape.pt'} do not fit the {TINY} feature extractor: tensor 'fc.weight' has shape"
    with pytest.raises(D2itError, match=rf"{expect} \[3, 16\], the network needs \[10, 16\]$"):
        Extractor(TINY, ["feat"], weights=tmp_path / "shape.pt")
    del state["fc.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(D2itError, match=r"feature extractor: it lacks tensor 'fc.weight'$"):
        Extractor(TINY, ["feat"], weights=tmp_path / "missing.pt")


def test_lpips_with_local_weights(tmp_path, registry):
    import lpips

    torch.manual_seed(0)
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random trunk, packaged linear layers: no download
    torch.save(model.state_dict(), tmp_path / "lpips.pth")
    metric = registry.create("metric", "lpips", {"net": "alex", "weights": str(tmp_path / "lpips.pth")})
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    same, diff = metric(a, a), metric(a, -a)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6) and (diff > 0).all()


def test_psnr():
    from d2it_cli.evaluation import psnr

    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.2).item() == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-5)


def test_unknown_extractor(registry):
    from d2it_cli.evaluation.scoring import build_extractor, make_metrics

    with pytest.raises(D2itError, match="unknown feature extractor"):
        build_extractor(make_metrics(registry, ["fid"]), settings(extractor="no-such"))
    assert isinstance(d2it.get("metric", "fid").summary, str)
