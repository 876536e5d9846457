"""`d2it eval gen|ref|recon|sample-and-score` through click, with a tiny random extractor (no downloads)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_evaluation import TINY, TinyExtractor, make_images, register_tiny, write_pngs

from d2it.io import file_sha256
from d2it_cli import generation


@pytest.fixture(scope="module")
def cli():
    from d2it_cli.main import load_registry, make_cli

    register_tiny()
    return make_cli(load_registry())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    torch.save(TinyExtractor(TINY, ["feat"]).state_dict(), path)
    return path


def run(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gen(cli, samples, ref, weights, *extra):
    return run(
        cli,
        "eval",
        "gen",
        "--samples",
        samples,
        "--ref",
        ref,
        "--feature-extractor",
        TINY,
        "--inception-weights",
        weights,
        "--batch",
        16,
        *extra,
    )


def test_gen_writes_provenance_and_npz_equals_png(tmp_path, cli, weights):
    arr = make_images(seed=1)
    np.savez(tmp_path / "s.npz", arr)
    np.savez(tmp_path / "r.npz", make_images(seed=2))
    folder = write_pngs(arr, tmp_path / "pngs")
    metrics = "fid,isc,kid,prc"
    sets = ("--set", "kid.subset_size=20", "--set", "isc.splits=4")
    res = gen(
        cli,
        tmp_path / "s.npz",
        tmp_path / "r.npz",
        weights,
        "--metrics",
        metrics,
        *sets,
        "--out",
        tmp_path / "a.json",
        "--seed",
        7,
    )
    assert res.exit_code == 0, res.output
    assert "fid" in res.output and "precision" in res.output
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["feature_extractor"]["name"] == TINY
    assert doc["feature_extractor"]["weights_sha256"] == file_sha256(weights)
    assert doc["num"] == 40 and doc["image_size"] == [16, 16] and doc["seed"] == 7
    assert doc["resize"]["policy"] == "none" and doc["reference"]["pixel_sha256"]
    assert {"torch", "torch-fidelity", "d2it-cli"} <= set(doc["versions"])
    assert set(doc["metrics"]) >= {"fid", "isc", "kid", "precision", "recall"}
    res = gen(
        cli, folder, tmp_path / "r.npz", weights, "--metrics", metrics, *sets, "--out", tmp_path / "b.json", "--seed", 7
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.json").read_text())["metrics"] == doc["metrics"]


def test_gen_num_uses_first_images_and_refuses_too_few(tmp_path, cli, weights):
    np.savez(tmp_path / "s.npz", make_images(seed=1))
    res = gen(cli, tmp_path / "s.npz", tmp_path / "s.npz", weights, "--metrics", "fid", "--num", 30, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["samples"]["count"] == 30
    folder = write_pngs(make_images(n=5), tmp_path / "few")
    res = gen(cli, folder, tmp_path / "s.npz", weights, "--num", 10)
    assert res.exit_code == 2 and "holds 5 images, fewer than the 10" in res.output


@pytest.mark.parametrize(
    "array, message",
    [
        (make_images(n=4).astype(np.float32), "dtype float32"),
        (make_images(n=4).transpose(0, 3, 1, 2).copy(), "channels-first"),
        (make_images(n=4)[..., 0], "expected (N, H, W, 3)"),
    ],
)
def test_gen_rejects_bad_npz(tmp_path, cli, weights, array, message):
    np.savez(tmp_path / "bad.npz", array)
    res = gen(cli, tmp_path / "bad.npz", tmp_path / "bad.npz", weights)
    assert res.exit_code == 2 and message in res.output and "bad.npz" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_gen_rejects_npz_without_arr0_and_non_npz(tmp_path, cli, weights):
    np.savez(tmp_path / "k.npz", images=make_images(n=4))
    res = gen(cli, tmp_path / "k.npz", tmp_path / "k.npz", weights)
    assert res.exit_code == 2 and "no array 'arr_0'" in res.output
    (tmp_path / "junk.npz").write_bytes(b"junk")
    res = gen(cli, tmp_path / "junk.npz", tmp_path / "k.npz", weights)
    assert res.exit_code == 2 and "not a readable .npz" in res.output


def test_gen_rejects_mixed_sizes_and_corrupt_png(tmp_path, cli, weights):
    np.savez(tmp_path / "r.npz", make_images(seed=3))
    folder = write_pngs(make_images(n=6), tmp_path / "mixed")
    write_pngs(make_images(n=1, size=32), tmp_path / "mixed" / "sub")
    res = gen(cli, folder, tmp_path / "r.npz", weights)
    assert res.exit_code == 2 and "different sizes" in res.output
    folder = write_pngs(make_images(n=6), tmp_path / "corrupt")
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = gen(cli, folder, tmp_path / "r.npz", weights)
    assert res.exit_code == 2 and "0003.png is not a readable image" in res.output


def test_ref_then_gen_and_mismatch_refusals(tmp_path, cli, weights):
    np.savez(tmp_path / "r.npz", make_images(seed=4))
    np.savez(tmp_path / "s.npz", make_images(seed=5, shift=10))
    stats = tmp_path / "r.safetensors"
    res = run(
        cli,
        "eval",
        "ref",
        "--data",
        tmp_path / "r.npz",
        "--out",
        stats,
        "--feature-extractor",
        TINY,
        "--inception-weights",
        weights,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(stats.with_suffix(".json").read_text())["count"] == 40
    direct = gen(cli, tmp_path / "s.npz", tmp_path / "r.npz", weights, "--metrics", "fid,prc", "--json")
    cached = gen(cli, tmp_path / "s.npz", stats, weights, "--metrics", "fid,prc", "--json")
    assert json.loads(cached.output)["metrics"] == json.loads(direct.output)["metrics"]
    other = tmp_path / "other.pth"
    state = TinyExtractor(TINY, ["feat"]).state_dict()
    torch.save({k: v + 1 for k, v in state.items()}, other)
    res = gen(cli, tmp_path / "s.npz", stats, other, "--metrics", "fid")
    assert res.exit_code == 2 and "weights sha256" in res.output and "r.safetensors" in res.output
    np.savez(tmp_path / "big.npz", make_images(seed=6, size=32))
    res = gen(cli, tmp_path / "big.npz", stats, weights, "--metrics", "fid")
    assert res.exit_code == 2 and "16x16 images but the samples are 32x32" in res.output
    res = run(
        cli,
        "eval",
        "ref",
        "--data",
        tmp_path / "r.npz",
        "--out",
        tmp_path / "nofeat.safetensors",
        "--feature-extractor",
        TINY,
        "--inception-weights",
        weights,
        "--no-features",
    )
    assert res.exit_code == 0, res.output
    res = gen(cli, tmp_path / "s.npz", tmp_path / "nofeat.safetensors", weights, "--metrics", "kid")
    assert res.exit_code == 2 and "no features" in res.output


def test_gen_without_inception_weights_offline_says_how_to_get_them(tmp_path, cli, monkeypatch):
    import d2it.weights
    from d2it_cli.evaluation import extractor

    def no_network(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(d2it.weights, "download", no_network)
    monkeypatch.delenv("D2IT_OFFLINE", raising=False)
    np.savez(tmp_path / "s.npz", make_images(n=4))
    res = run(cli, "eval", "gen", "--samples", tmp_path / "s.npz", "--ref", tmp_path / "s.npz", "--metrics", "fid")
    assert res.exit_code == 2
    assert extractor.URL_INCEPTION_V3 in res.output and "--inception-weights" in res.output


TINY_SYSTEM = [
    "--vae",
    "dvae-kl",
    "--backbone",
    "dit-s",
    "--refine",
    "window16",
    "--image-size",
    "32",
    "--num-classes",
    "1",
    "--set",
    "vae.base_width=8",
    "--set",
    "vae.norm_groups=4",
    "--set",
    "vae.num_res_blocks=1",
    "--set",
    "vae.attn_levels=0",
    "--set",
    "vae.mid_attn=false",
    "--set",
    "vae.channel_mult=1,1,1,1,1",
    "--set",
    "vae.decoder_mult=1,1,1,1",
    "--set",
    "backbone.depth=1",
    "--set",
    "backbone.hidden_size=32",
    "--set",
    "backbone.num_heads=2",
    "--set",
    "backbone.refine_depth=1",
    "--set",
    "grain.depth=1",
    "--set",
    "grain.hidden_size=32",
    "--set",
    "grain.num_heads=2",
    "--no-count",
]


@pytest.fixture(scope="module")
def tiny_system(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("sys") / "model"
    res = run(cli, "build", *TINY_SYSTEM, "--out", out)
    if res.exit_code != 0:
        pytest.skip(f"cannot build a tiny system here: {res.output.strip()}")
    return out


def test_recon_reports_rfid_lpips_psnr_fine_ratio(tmp_path, cli, weights, tiny_system):
    import lpips

    torch.manual_seed(0)
    torch.save(lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).state_dict(), tmp_path / "lpips.pth")
    res = run(
        cli,
        "eval",
        "recon",
        "--system",
        tiny_system,
        "--data",
        "synthetic:24",
        "--feature-extractor",
        TINY,
        "--inception-weights",
        weights,
        "--lpips-weights",
        tmp_path / "lpips.pth",
        "--set",
        "lpips.net=alex",
        "--batch",
        8,
        "--out",
        tmp_path / "recon.json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "recon.json").read_text())
    m = doc["metrics"]
    assert m["rfid"] > 0 and m["lpips"] > 0 and 0 < m["psnr"] < 60 and 0 <= m["fine_ratio"] <= 1
    assert -1 <= m["ssim"] < 1  # reported next to psnr by default
    assert doc["data"]["count"] == 24 and doc["feature_extractor"]["weights_sha256"] == file_sha256(weights)
    res = run(cli, "eval", "recon", "--system", tiny_system, "--data", "synthetic:4", "--num", 10, "--metrics", "psnr")
    assert res.exit_code == 2 and "fewer than the 10" in res.output


def test_sample_and_score_is_sharded_and_resumable(tmp_path, cli, weights, tiny_system, monkeypatch):
    calls = []
    real = generation.generate

    def counting(system, classes, **kw):
        calls.append(kw["seed"])
        return real(system, classes, **kw)

    monkeypatch.setattr(generation, "generate", counting)
    np.savez(tmp_path / "r.npz", make_images(n=12, size=32, seed=8))
    out = tmp_path / "run"
    args = [
        "eval",
        "sample-and-score",
        "--system",
        tiny_system,
        "--ref",
        tmp_path / "r.npz",
        "--num",
        12,
        "--metrics",
        "fid",
        "--steps",
        2,
        "--batch",
        4,
        "--device",
        "cpu",
        "--feature-extractor",
        TINY,
        "--inception-weights",
        weights,
        "--out",
        out,
        "--quiet",
    ]
    res = run(cli, *args)
    assert res.exit_code == 0, res.output
    assert len(calls) == 3 and len(list((out / "shards").glob("shard-*.npz"))) == 3
    first = json.loads((out / "metrics.json").read_text())
    assert first["num"] == 12 and first["sampling"]["steps"] == 2 and first["metrics"]["fid"] > 0
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (12, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    (out / "shards" / "shard-000001.npz").unlink()
    calls.clear()
    res = run(cli, *args)
    assert res.exit_code == 0, res.output
    assert len(calls) == 1  # only the missing shard is sampled again
    assert json.loads((out / "metrics.json").read_text())["metrics"] == first["metrics"]


def test_sample_and_score_takes_sampler_options(tmp_path, cli, weights, tiny_system, monkeypatch):
    calls = []
    real = generation.generate

    def counting(system, classes, **kw):
        calls.append(kw)
        return real(system, classes, **kw)

    monkeypatch.setattr(generation, "generate", counting)
    np.savez(tmp_path / "r.npz", make_images(n=4, size=32, seed=8))
    out = tmp_path / "run"
    args = ["eval", "sample-and-score", "--system", tiny_system, "--ref", tmp_path / "r.npz", "--num", 4,
            "--metrics", "fid", "--batch", 4, "--device", "cpu", "--feature-extractor", TINY,
            "--inception-weights", weights, "--out", out, "--quiet", "--sampler", "euler",
            "--set", "sampler.steps=2", "--set", "sampler.spacing=trailing"]  # fmt: skip
    res = run(cli, *args)
    assert res.exit_code == 0, res.output
    assert calls[0]["sampler"] == "euler" and calls[0]["steps"] is None
    assert calls[0]["sampler_options"] == {"steps": 2, "spacing": "trailing"}
    sampling = json.loads((out / "metrics.json").read_text())["sampling"]
    assert sampling["sampler"] == "euler" and sampling["sampler_options"]["spacing"] == "trailing"
    bad = run(cli, *args[:-4], "--sampler", "euler", "--set", "sampler.eta=1")
    assert bad.exit_code == 2 and "no option 'eta'" in bad.output


def no_extractor(*args, **kwargs):
    raise AssertionError("swd alone must not build a feature extractor")


def test_gen_swd_needs_no_weights_and_records_its_settings(tmp_path, cli, weights, monkeypatch):
    from d2it_cli.evaluation import scoring

    samples = write_pngs(make_images(n=12, size=32, seed=1), tmp_path / "s")
    ref = write_pngs(make_images(n=10, size=32, seed=2, shift=30), tmp_path / "r")
    with monkeypatch.context() as m:  # no extractor, so no Inception weights, no download
        m.setattr(scoring, "Extractor", no_extractor)
        res = run(cli, "eval", "gen", "--samples", samples, "--ref", ref, "--metrics", "swd", "--seed", 5,
                  "--set", "swd.nhoods_per_image=16", "--json", "--out", tmp_path / "a.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc["metrics"]) == {"swd", "swd_32", "swd_16"} and doc["metrics"]["swd"] > 0
    assert doc["metrics"]["swd"] == pytest.approx((doc["metrics"]["swd_32"] + doc["metrics"]["swd_16"]) / 2)
    assert doc["metric_options"]["swd"] == {"nhoods_per_image": 16, "nhood_size": 7, "dir_repeats": 4,
                                            "dirs_per_repeat": 128, "resolution_min": 16}  # fmt: skip
    assert doc["seed"] == 5 and doc["feature_extractor"] is None
    assert doc["samples"]["count"] == 12 and doc["reference"]["count"] == 10 and doc["reference"]["pixel_sha256"]
    assert json.loads((tmp_path / "a.json").read_text()) == doc
    both = gen(cli, samples, ref, weights, "--metrics", "fid,swd", "--seed", 5, "--set", "swd.nhoods_per_image=16",
               "--json")  # fmt: skip
    assert both.exit_code == 0, both.output
    mixed = json.loads(both.output)["metrics"]
    assert mixed["fid"] > 0 and {k: mixed[k] for k in doc["metrics"]} == doc["metrics"]


def test_gen_swd_refusals(tmp_path, cli):
    samples = write_pngs(make_images(n=4, size=32), tmp_path / "s")
    res = run(cli, "eval", "gen", "--samples", samples, "--ref", tmp_path / "r.safetensors", "--metrics", "swd")
    assert res.exit_code == 2 and "swd compares image pixels" in res.output and "image folder or .npz" in res.output
    res = run(cli, "eval", "gen", "--samples", samples, "--ref", samples, "--metrics", "swd",
              "--set", "swd.nhood_size=8")  # fmt: skip
    assert res.exit_code == 2 and "swd.nhood_size must be odd" in res.output
    small = write_pngs(make_images(n=4, size=8), tmp_path / "small")
    res = run(cli, "eval", "gen", "--samples", small, "--ref", small, "--metrics", "swd")
    assert res.exit_code == 2 and "at least resolution_min=16 pixels" in res.output


def test_recon_swd_and_ssim_without_weights(tmp_path, cli, tiny_system, monkeypatch):
    from d2it_cli.evaluation import recon

    monkeypatch.setattr(recon, "Extractor", no_extractor)
    res = run(cli, "eval", "recon", "--system", tiny_system, "--data", "synthetic:12", "--metrics", "psnr,ssim,swd",
              "--set", "swd.nhoods_per_image=16", "--batch", 5, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    m = doc["metrics"]
    assert 0 < m["psnr"] < 60 and -1 <= m["ssim"] < 1 and m["swd"] > 0 and {"swd_32", "swd_16"} <= set(m)
    assert doc["metric_options"]["swd"]["nhoods_per_image"] == 16 and doc["feature_extractor"] is None


def test_sample_and_score_swd(tmp_path, cli, tiny_system):
    np.savez(tmp_path / "r.npz", make_images(n=6, size=32, seed=8))
    args = ["eval", "sample-and-score", "--system", tiny_system, "--num", 4, "--metrics", "swd", "--steps", 2,
            "--batch", 4, "--device", "cpu", "--quiet", "--set", "swd.nhoods_per_image=16"]  # fmt: skip
    res = run(cli, *args, "--ref", tmp_path / "r.safetensors", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "swd compares image pixels" in res.output
    assert not (tmp_path / "bad" / "samples.npz").exists()  # refused before sampling
    res = run(cli, *args, "--ref", tmp_path / "r.npz", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["metrics"]["swd"] > 0 and {"swd_32", "swd_16"} <= set(doc["metrics"]) and doc["num"] == 4
