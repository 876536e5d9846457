"""Latent cache storage: bf16 moments against fp32, the `used`-grain layout, and the size `encode` announces."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from d2it.layout import neighbour_copy
from d2it_cli.cache import LatentCache
from d2it_cli.cache_layout import bytes_per_image, human, pack_used, unpack_used
from d2it_vae.regularizers import DiagonalGaussian

SHAPES_256 = [[8, 16, 16], [8, 32, 32]]  # dvae-kl at 256 px: mean + log-variance of 4 channels per grain


def latent(item, generator=None, mode=False):
    """The copied-layout latent of one cache item, drawn as the DVAE does (its `kl` posterior's `sample`)."""
    posterior = DiagonalGaussian(channels=item["params"][0].shape[0] // 2)
    codes = [posterior.sample(p[None].float(), generator=generator, mode=mode) for p in item["params"]]
    return neighbour_copy(codes, item["grain_map"][None])[0]


@pytest.fixture(scope="module")
def caches(tiny_system_template, d2it_cli, tmp_path_factory):
    """{(dtype, layout): (cache directory, encode output)} of the same 12 synthetic images (built once)."""
    tmp = tmp_path_factory.mktemp("caches")
    system = tmp / "system"
    shutil.copytree(tiny_system_template, system)
    torch.set_num_threads(2)

    def run(*args):
        return CliRunner().invoke(d2it_cli, [str(a) for a in args], catch_exceptions=False)

    run("thresholds", "--data", "synthetic:12", "--system", system, "--out", tmp / "t.json")
    out = {"system": system}
    for dtype, layout in (("fp32", "all"), ("bf16", "all"), ("bf16", "used")):
        path = tmp / f"cache-{dtype}-{layout}"
        args = ["encode", "--system", system, "--data", "synthetic:12", "--out", path, "--quiet"]
        result = run(*args, "--dtype", dtype, "--grains", layout, "--batch", "5", "--shard-size", "7")
        assert result.exit_code == 0, result.output
        out[dtype, layout] = (path, result.output)
    return out


def test_bf16_moments_keep_the_posterior(caches):
    fp32, bf16 = LatentCache(caches["fp32", "all"][0]), LatentCache(caches["bf16", "all"][0])
    assert fp32.manifest["dtype"] == "fp32" and bf16.manifest["dtype"] == "bf16"
    # the latent scale is measured before storage: identical
    assert bf16.manifest["latent_scale"] == fp32.manifest["latent_scale"]
    worst_mean, worst_draw = 0.0, 0.0
    draws = {"fp32": [], "bf16": []}
    for i in range(len(fp32)):
        for version in (0, 1):
            a, b = fp32.read(i, version), bf16.read(i, version)
            assert torch.equal(a["grain_map"], b["grain_map"])
            for pa, pb in zip(a["params"], b["params"]):
                mean_a, logvar_a = pa.chunk(2)
                mean_b, logvar_b = pb.chunk(2)
                std = torch.exp(0.5 * logvar_a)
                # bf16 keeps 8 significant bits: each moment within 2^-8 of its value
                assert torch.allclose(mean_b, mean_a, rtol=2**-8, atol=1e-6)
                assert torch.allclose(logvar_b, logvar_a, rtol=2**-8, atol=1e-6)
                worst_mean = max(worst_mean, float(((mean_b - mean_a).abs() / std).max()))
            for name, item in (("fp32", a), ("bf16", b)):
                g = torch.Generator().manual_seed(i * 2 + version)
                draws[name].append(latent(item, generator=g))
            worst_draw = max(worst_draw, float((draws["bf16"][-1] - draws["fp32"][-1]).abs().max()))
    # the rounding moves a mean by a small fraction of the posterior's own spread
    assert worst_mean < 0.05
    za, zb = torch.stack(draws["fp32"]), torch.stack(draws["bf16"])
    assert float(zb.mean()) == pytest.approx(float(za.mean()), abs=0.01 * float(za.std()))
    assert float(zb.std()) == pytest.approx(float(za.std()), rel=0.01)
    assert worst_draw < 0.05 * float(za.std())


def test_used_layout_gives_the_same_latents_in_less_space(caches, run_cli):
    full, used = LatentCache(caches["bf16", "all"][0]), LatentCache(caches["bf16", "used"][0])
    assert used.layout == "used" and full.layout == "all" and len(used) == len(full) == 12
    for i in range(len(full)):
        for version in (0, 1):
            a, b = full.read(i, version), used.read(i, version)
            assert torch.equal(a["grain_map"], b["grain_map"]) and torch.equal(a["label"], b["label"])
            za, zb = latent(a, mode=True), latent(b, mode=True)
            assert torch.equal(za, zb), (i, version)

    def size(path):
        return sum(f.stat().st_size for f in path.glob("shard-*.safetensors"))

    assert size(used.path) < size(full.path)
    result = run_cli(
        "train",
        "content",
        "--system",
        caches["system"],
        "--cache",
        used.path,
        "--steps",
        "1",
        "--grain-source",
        "random",
    )
    assert result.exit_code == 2 and "encode again with --grains all" in result.output


def test_pack_and_unpack_used_rows_round_trip():
    torch.manual_seed(0)
    params = [torch.randn(3, 8, 4, 4), torch.randn(3, 8, 8, 8)]
    grain_map = torch.randint(0, 2, (3, 4, 4))
    packed = pack_used(params, grain_map)
    assert packed["used.0"].shape == (int((grain_map == 0).sum()), 8)
    assert packed["used.1"].shape == (int((grain_map == 1).sum()), 32)
    start = [0, 0]
    for i in range(3):
        rows = []
        for g in range(2):
            n = int(packed[f"count.{g}"][i])
            rows.append(packed[f"used.{g}"][start[g] : start[g] + n])
            start[g] += n
        back = unpack_used(rows, grain_map[i], [[8, 4, 4], [8, 8, 8]])
        mask = grain_map[i] == 0
        assert torch.equal(back[0][:, mask], params[0][i][:, mask])
        fine = mask.logical_not().repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.equal(back[1][:, fine], params[1][i][:, fine])
        assert not back[1][:, ~fine].any()


def test_cache_sizes_per_image_and_for_imagenet_and_ffhq():
    per = {
        (dtype, layout): bytes_per_image(SHAPES_256, [16, 16], layout, nbytes, 0.5)
        for dtype, nbytes in (("fp32", 4), ("bf16", 2))
        for layout in ("all", "used")
    }
    assert human(per["fp32", "all"]) == "82.4 KB"  # the measurement of the old default
    assert human(per["bf16", "all"]) == "41.5 KB" and human(per["bf16", "used"]) == "21.0 KB"
    assert human(per["fp32", "all"] * 1_281_167) == "105.6 GB"
    assert human(per["bf16", "all"] * 1_281_167) == "53.2 GB"
    assert human(per["bf16", "used"] * 1_281_167) == "26.9 GB"
    assert human(per["bf16", "all"] * 70_000) == "2.9 GB"


def test_encode_announces_the_size_before_it_starts(caches):
    path, output = caches["bf16", "all"]
    first = output.splitlines()[0]
    assert first.startswith("cache: ") and "per image with its flip (bf16, grains all)" in first
    assert first.endswith("for 12 images")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["layout"] == "all" and manifest["count"] == 12
    assert "at a fine ratio of 0.5" in caches["bf16", "used"][1].splitlines()[0]
