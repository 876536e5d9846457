"""Bad inputs of `d2it eval gen|ref|recon|sample-and-score` and `d2it demo`: exit 2, one `error:` line."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import check, probe, run_main

GEN = "eval gen --samples {good_npz} --ref {good_npz} --metrics fid --feature-extractor vgg16"
REF = "eval ref --data {good_npz} --out {tmp}/ref.safetensors"
RECON = "eval recon --system {sys} --data synthetic:4 --metrics psnr"
SAS = "eval sample-and-score --system {sys} --ref {good_npz} --num 2 --steps 1 --out {tmp}/sas --metrics fid"

PROBES = [
    probe("gen-samples-missing", "eval gen --samples {missing} --ref {good_npz}", "does-not-exist"),
    probe("gen-samples-renamed-npy", "eval gen --samples {renamed_npz} --ref {good_npz}", "renamed.npz"),
    probe("gen-samples-garbage-npz", "eval gen --samples {garbage_npz} --ref {good_npz}", "garbage.npz"),
    probe("gen-samples-no-arr0", "eval gen --samples {nokey_npz} --ref {good_npz}", "arr_0"),
    probe("gen-samples-float", "eval gen --samples {float_npz} --ref {good_npz}", "floats.npz"),
    probe("gen-samples-flat", "eval gen --samples {flat_npz} --ref {good_npz}", "flat.npz"),
    probe("gen-samples-empty-dir", "eval gen --samples {emptydir} --ref {good_npz}", "empty"),
    probe("gen-samples-bad-images", "eval gen --samples {badimages} --ref {good_npz}", "broken.png"),
    probe("gen-ref-missing", "eval gen --samples {good_npz} --ref {missing}", "does-not-exist"),
    probe("gen-ref-bad-stats", "eval gen --samples {good_npz} --ref {bad_stats}", "stats.safetensors"),
    probe("gen-ref-renamed-npy", "eval gen --samples {good_npz} --ref {renamed_npz}", "renamed.npz"),
    probe("gen-unknown-metric", "eval gen --samples {good_npz} --ref {good_npz} --metrics fud", "fud"),
    probe("gen-num-0", f"{GEN} --num 0", "--num"),
    probe("gen-num-too-many", f"{GEN} --num 100", "100"),
    probe("gen-batch-0", f"{GEN} --batch 0", "--batch"),
    probe("gen-seed-neg", f"{GEN} --seed -1", "--seed"),
    probe("gen-device", f"{GEN} --device cuda:3", "--device"),
    probe("gen-workers-neg", f"{GEN} --workers -1", "--workers"),
    probe("gen-resize", f"{GEN} --resize stretch", "--resize"),
    probe("gen-image-size-0", f"{GEN} --resize center-crop --image-size 0", "--image-size"),
    probe("gen-set-syntax", f"{GEN} --set nonsense", "nonsense"),
    probe("gen-set-unknown-metric", f"{GEN} --set zz.splits=3", "zz"),
    probe("gen-inception-missing", f"{GEN} --inception-weights {{missing}}", "does-not-exist"),
    probe("gen-inception-bad", f"{GEN} --inception-weights {{bad_weights}}", "weights.pth"),
    probe("gen-out-under-file", f"{GEN} --out {{file}}/m.json", "afile"),
    probe("gen-unknown-extractor", "eval gen --samples {good_npz} --ref {good_npz} --feature-extractor zz", "zz"),
    probe("ref-data-missing", "eval ref --data {missing} --out {tmp}/r.safetensors", "does-not-exist"),
    probe("ref-data-renamed-npy", "eval ref --data {renamed_npz} --out {tmp}/r.safetensors", "renamed.npz"),
    probe("ref-num-0", f"{REF} --num 0", "--num"),
    probe("ref-seed-huge", f"{REF} --seed 18446744073709551616", "--seed"),
    probe(
        "ref-out-under-file", "eval ref --data {good_npz} --out {file}/r.safetensors --feature-extractor vgg16", "afile"
    ),
    probe("recon-system-missing", "eval recon --system {missing} --data synthetic:4", "does not exist"),
    probe("recon-system-no-vae", "eval recon --system {novae} --data synthetic:4 --metrics psnr", "VAE"),
    probe("recon-system-bad-json", "eval recon --system {sys_badjson} --data synthetic:4 --metrics psnr", "d2it.json"),
    probe("recon-unknown-metric", "eval recon --system {sys} --data synthetic:4 --metrics sharpness", "sharpness"),
    probe("recon-data-missing", "eval recon --system {sys} --data {missing} --metrics psnr", "does-not-exist"),
    probe("recon-num-0", f"{RECON} --num 0", "--num"),
    probe("recon-device", f"{RECON} --device xpu9", "--device"),
    probe(
        "recon-lpips-weights-missing",
        "eval recon --system {sys} --data synthetic:4 --metrics lpips --lpips-weights {missing}",
        "does-not-exist",
    ),
    probe(
        "recon-lpips-weights-bad",
        "eval recon --system {sys} --data synthetic:4 --metrics lpips --lpips-weights {bad_weights}",
        "weights.pth",
    ),
    probe("sas-no-num", "eval sample-and-score --system {sys} --ref {good_npz} --out {tmp}/s", "--num"),
    probe("sas-preset", f"{SAS} --preset fid-1k", "--preset"),
    probe("sas-cfg-nan", f"{SAS} --cfg-scale nan", "--cfg-scale"),
    probe("sas-cfg-inf", f"{SAS} --cfg-scale inf", "--cfg-scale"),
    probe("sas-grain-cfg-neg", f"{SAS} --grain-cfg-scale -1", "--grain-cfg-scale"),
    probe("sas-steps-0", f"{SAS} --steps 0", "--steps"),
    probe("sas-seed-neg", f"{SAS} --seed -3", "--seed"),
    probe("sas-metric-seed-huge", f"{SAS} --metric-seed 18446744073709551616", "--metric-seed"),
    probe("sas-eval-batch-0", f"{SAS} --eval-batch 0", "--eval-batch"),
    probe("sas-device", f"{SAS} --device cuda", "--device"),
    probe(
        "sas-no-vae",
        "eval sample-and-score --system {novae} --ref {good_npz} --num 2 --steps 1 --out {tmp}/s "
        "--metrics fid --feature-extractor vgg16",
        "no VAE",
    ),
    probe(
        "sas-nan-scale",
        "eval sample-and-score --system {sys_nanscale} --ref {good_npz} --num 2 --steps 1 --out {tmp}/s",
        "latent_scale",
    ),
    probe(
        "sas-out-foreign",
        "eval sample-and-score --system {sys} --ref {good_npz} --num 2 --steps 1 --out {userdir}",
        "not written by d2it",
    ),
    probe("sas-out-file", "eval sample-and-score --system {sys} --ref {good_npz} --num 2 --out {file}", "afile"),
    probe("eval-unknown-subcommand", "eval score", "score"),
    probe("demo-device", "demo --out {tmp}/d --device cuda:1", "--device"),
    probe("demo-seed", "demo --out {tmp}/d --seed -1", "--seed"),
    probe("demo-plan-syntax", "demo --out {tmp}/d --plan nonsense", "nonsense"),
    probe("demo-plan-unknown", "demo --out {tmp}/d --plan colour=red", "colour"),
    probe("demo-out-file", "demo --out {file}", "afile"),
    probe("demo-out-foreign", "demo --out {userdir} --plan dvae_steps=1", "not written by d2it"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_eval_and_demo_reject(run_probe, command, expect):
    run_probe(command, expect)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("extractor", ["inception-v3-compat", "vgg16"])
def test_extractor_weights_with_wrong_keys(tmp_path, suffix, extractor):
    """Plain tensors of some other network as --inception-weights: one sentence naming a missing tensor."""
    images = tmp_path / "images.npz"
    np.savez(images, np.zeros((2, 16, 16, 3), dtype=np.uint8))
    weights = tmp_path / f"other{suffix}"
    state = {"encoder.weight": torch.ones(2, 3)}
    if suffix == ".safetensors":
        save_file(state, weights)
    else:
        torch.save(state, weights)
    argv = ["eval", "gen", "--samples", images, "--ref", images, "--feature-extractor", extractor]
    line = check(run_main([*argv, "--inception-weights", weights]), f"do not fit the {extractor} feature extractor")
    assert str(weights) in line and "lacks tensor" in line
