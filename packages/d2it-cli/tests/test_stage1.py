"""Stage 1 on the CLI: `d2it thresholds`, `d2it train dvae` and `d2it encode` on a tiny 32-pixel system."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from d2it import system as systems
from d2it.errors import CheckpointError, DataError
from d2it.io import file_sha256, load_safetensors, state_sha256
from d2it_cli.cache import LatentCache
from d2it_cli.data import open_dataset
from d2it_cli.engine import load_checkpoint, read_log

DVAE_FAST = ["--batch", "2", "--lpips-random", "--log-every", "1", "--quiet", "--lr", "1e-3"]


def test_thresholds_store_the_percentile_for_the_ratio(tiny_system, tmp_path, run_cli):
    out = tmp_path / "thr.json"
    result = run_cli("thresholds", "--data", "synthetic:12", "--system", tiny_system, "--out", out, "--batch", "5")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert sorted(int(k) for k in doc["percentiles"]) == list(range(1, 100))
    assert doc["regions"] == 12 * 4 and doc["images"] == 12 and doc["grains"] == 2 and doc["region"] == 16
    assert doc["thresholds"] == [pytest.approx(doc["percentiles"]["50"])]
    record, _ = systems.read_record(tiny_system)
    assert list(record.thresholds) == doc["thresholds"]
    # r = 0.25 -> the 75th percentile; without --system nothing is stored
    result = run_cli("thresholds", "--data", "synthetic:12", "--image-size", "32", "--ratio", "0.25", "--out", out)
    assert result.exit_code == 0, result.output
    doc2 = json.loads(out.read_text())
    assert doc2["thresholds"] == [pytest.approx(doc2["percentiles"]["75"])] and doc2["share_above"][0] == 0.25
    assert systems.read_record(tiny_system)[0].thresholds == record.thresholds
    bad = run_cli("thresholds", "--data", "synthetic:4", "--system", tiny_system, "--out", out, "--image-size", "64")
    assert bad.exit_code == 2 and "differs from the system's image size 32" in bad.output


def test_train_dvae_logs_previews_checkpoints_and_writes_weights_back(tiny_system, run_cli):
    run_cli("thresholds", "--data", "synthetic:16", "--system", tiny_system, "--out", tiny_system / "t.json")
    before = file_sha256(tiny_system / "vae.safetensors")
    run_dir = tiny_system / "runs" / "dvae"
    result = run_cli(
        "train",
        "dvae",
        "--system",
        tiny_system,
        "--data",
        "synthetic:16",
        "--steps",
        "2",
        "--sample-every",
        "2",
        "--ckpt-every",
        "1",
        "--disc-start",
        "1",
        "--learn-logvar",
        "--save-to-system",
        *DVAE_FAST,
    )
    assert result.exit_code == 0, result.output
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [1, 2]
    assert {"l1", "lpips", "reg", "d_loss", "g_loss", "loss", "lr", "images_per_s", "fine_ratio"} <= set(log[0])
    assert log[0]["d_loss"] == 0.0 and log[1]["d_loss"] > 0.0  # the GAN starts at --disc-start 1
    assert (run_dir / "samples" / "step-0000002.png").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    ckpt = run_dir / "checkpoints" / "step-0000002"
    assert {"vae.safetensors", "discriminator.safetensors", "state.pt", "rng-00000.pt"} <= {
        p.name for p in ckpt.iterdir()
    }
    assert file_sha256(tiny_system / "vae.safetensors") != before
    weights, _ = load_safetensors(tiny_system / "vae.safetensors")
    saved, _ = load_safetensors(ckpt / "vae.safetensors")
    assert all(torch.equal(weights[k], saved[k]) for k in weights)
    systems.load(tiny_system)  # the directory still loads as a whole
    # the loss convention is recorded next to the weights: LDM's normalisation, here with a learned log-variance
    convention = systems.read_record(tiny_system)[1]["extra"]["vae_loss"]
    assert convention["normalization"] == "ldm" and convention["learn_logvar"] and convention["reg_weight"] == 1e-6
    assert convention["logvar"] != 0.0  # it trained
    assert "loss_logvar.safetensors" in {p.name for p in ckpt.iterdir()}
    # --resume latest continues at step 3 with the same run directory, given the options the run started with
    resume = ["train", "dvae", "--system", tiny_system, "--data", "synthetic:16", "--steps", "3", "--resume", "latest",
              "--disc-start", "1", *DVAE_FAST]  # fmt: skip
    bad = run_cli(*resume)  # without --learn-logvar the optimizer would train other parameters
    assert bad.exit_code == 2 and "such as --learn-logvar, differs" in bad.output
    result = run_cli(*resume, "--learn-logvar")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_log(run_dir)] == [1, 2, 3]
    cfg = json.loads((run_dir / "train.json").read_text())
    assert cfg["global_batch"] == 2 and cfg["lr"]["vae"] == 1e-3


def test_train_dvae_default_lr_scales_with_the_global_batch(tiny_system, run_cli):
    result = run_cli(
        "train",
        "dvae",
        "--system",
        tiny_system,
        "--data",
        "synthetic:8",
        "--steps",
        "1",
        "--batch",
        "2",
        "--grad-accum",
        "2",
        "--lpips-random",
        "--quiet",
        "--perceptual-weight",
        "0",
        "--save-to-system",
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((tiny_system / "runs" / "dvae" / "train.json").read_text())
    assert cfg["lr"]["vae"] == pytest.approx(4.5e-6 * 4)
    convention = systems.read_record(tiny_system)[1]["extra"][
        "vae_loss"
    ]  # the default is LDM's released behaviour: logvar fixed at 0
    assert convention["learn_logvar"] is False and convention["logvar"] == 0.0
    bad = run_cli("train", "dvae", "--system", tiny_system, "--data", "synthetic:8", "--lpips-random", "--quiet")
    assert bad.exit_code == 2 and "--steps or --epochs" in bad.output


def test_encode_writes_a_cache_with_flips_and_the_latent_scale(tiny_system, tmp_path, run_cli):
    cache_dir = tmp_path / "cache"
    result = run_cli(
        "encode",
        "--system",
        tiny_system,
        "--data",
        "synthetic:10",
        "--out",
        cache_dir,
        "--batch",
        "4",
        "--shard-size",
        "4",
        "--dtype",
        "fp32",  # exact parameters to compare with the VAE's below
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["count"] == 10 and len(manifest["shards"]) == 3 and manifest["grains"] == 2
    assert manifest["shapes"]["params"] == [[8, 2, 2], [8, 4, 4]] and manifest["shapes"]["grain_map"] == [2, 2]
    record, _ = systems.read_record(tiny_system)
    assert record.latent_scale == pytest.approx(manifest["latent_scale"]) and record.latent_scale != 1.0
    system = systems.load(tiny_system)
    vae = system.vae.eval()
    assert manifest["vae_sha256"] == state_sha256(vae.state_dict())

    cache = LatentCache(cache_dir)
    assert len(cache) == 10 and cache.num_classes == 4
    cache.check(manifest["vae_sha256"])
    with pytest.raises(CheckpointError, match="other DVAE weights"):
        cache.check("0" * 64)
    images = torch.stack([open_dataset("synthetic:10", 32, train=False)[i][0] for i in (0, 9)])
    with torch.no_grad():
        params = vae.encode(images)
    for row, i in enumerate((0, 9)):
        item, flipped = cache.read(i, 0), cache.read(i, 1)
        assert int(item["label"]) == i % 4
        for g in range(2):
            assert torch.allclose(item["params"][g], params[g][row], atol=1e-5)
        assert torch.equal(flipped["grain_map"], item["grain_map"].flip(-1))
        assert torch.equal(item["grain_map"], vae.grain_map(images[row : row + 1])[0])
    # random flips pick either version; sampling from the stored posterior follows the grain layout
    torch.manual_seed(0)
    versions = {torch.equal(cache[0]["grain_map"], cache.read(0, 1)["grain_map"]) for _ in range(20)}
    assert len(versions) == 2 or torch.equal(cache.read(0, 0)["grain_map"], cache.read(0, 1)["grain_map"])
    batch = [cache.read(i, 0) for i in range(3)]
    params_b = [torch.stack([b["params"][g] for b in batch]) for g in range(2)]
    maps = torch.stack([b["grain_map"] for b in batch])
    z = vae.sample_latent(params_b, maps, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, 4, 4, 4) and torch.isfinite(z).all()
    mean = vae.sample_latent(params_b, maps, mode=True)
    coarse = maps == 0
    if coarse.any():  # a coarse region's 2x2 cells hold one code
        b, i, j = coarse.nonzero()[0].tolist()
        cells = mean[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].flatten(1)
        assert torch.equal(cells, cells[:, :1].expand_as(cells))
    # an existing cache is not overwritten by accident
    again = run_cli("encode", "--system", tiny_system, "--data", "synthetic:10", "--out", cache_dir, "--quiet")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert np.isfinite(manifest["latent_std"])


def test_an_incomplete_cache_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        LatentCache(tmp_path / "half")


def test_train_dvae_under_torchrun_two_processes(tiny_system):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "d2it_cli",
        "train",
        "dvae",
        "--system",
        str(tiny_system),
        "--data",
        "synthetic:8",
        "--steps",
        "2",
        "--disc-start",
        "1",
        *DVAE_FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tiny_system / "runs" / "dvae" / "checkpoints" / "step-0000002"
    assert (ckpt / "rng-00000.pt").is_file() and (ckpt / "rng-00001.pt").is_file()
    _, state, _ = load_checkpoint(ckpt)
    assert state["world_size"] == 2
    cfg = json.loads((tiny_system / "runs" / "dvae" / "train.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch"] == 4
    assert [r["step"] for r in read_log(tiny_system / "runs" / "dvae")] == [1, 2]
