"""Bad inputs of `d2it sample`: exit 2, one `error:` line, no traceback."""

import pytest

from conftest import probe

SAMPLE = "sample --system {sys} --out {tmp}/out --num 2 --steps 1 --batch 2"

PROBES = [
    probe("num-0", f"{SAMPLE} --num 0", "--num"),
    probe("num-neg", f"{SAMPLE} --num -4", "--num"),
    probe("num-text", f"{SAMPLE} --num many", "--num"),
    probe("steps-0", f"{SAMPLE} --steps 0", "--steps"),
    probe("steps-neg", f"{SAMPLE} --steps -1", "--steps"),
    probe("batch-0", f"{SAMPLE} --batch 0", "--batch"),
    probe("cfg-nan", f"{SAMPLE} --cfg-scale nan", "--cfg-scale"),
    probe("cfg-inf", f"{SAMPLE} --cfg-scale inf", "--cfg-scale"),
    probe("cfg-neg-inf", f"{SAMPLE} --cfg-scale -inf", "--cfg-scale"),
    probe("cfg-neg", f"{SAMPLE} --cfg-scale -2", "--cfg-scale"),
    probe("cfg-text", f"{SAMPLE} --cfg-scale strong", "--cfg-scale"),
    probe("grain-cfg-nan", f"{SAMPLE} --grain-cfg-scale nan", "--grain-cfg-scale"),
    probe("seed-neg", f"{SAMPLE} --seed -1", "--seed"),
    probe("seed-65-bits", f"{SAMPLE} --seed 36893488147419103232", "--seed"),
    probe("seed-text", f"{SAMPLE} --seed lucky", "--seed"),
    probe("device-bogus", f"{SAMPLE} --device gpu9", "--device"),
    probe("device-cuda", f"{SAMPLE} --device cuda", "--device"),
    probe("device-mps", f"{SAMPLE} --device mps", "--device"),
    probe("class-out-of-range", f"{SAMPLE} --class 9", "class 9"),
    probe("class-negative", f"{SAMPLE} --class=-1", "class -1"),
    probe("class-text", f"{SAMPLE} --class cat", "cat"),
    probe("class-and-uniform", f"{SAMPLE} --class 1 --classes-uniform", "classes"),
    probe("unknown-sampler", f"{SAMPLE} --sampler zz", "ddpm"),
    probe("system-missing", "sample --system {missing} --out {tmp}/o --num 1", "does not exist"),
    probe("system-not-a-system", "sample --system {nosys} --out {tmp}/o --num 1", "d2it.json"),
    probe("system-is-a-file", "sample --system {file} --out {tmp}/o --num 1", "afile"),
    probe("system-no-vae", "sample --system {novae} --out {tmp}/o --num 1 --steps 1", "no VAE"),
    probe("system-nan-scale", "sample --system {sys_nanscale} --out {tmp}/o --num 1 --steps 1", "latent_scale"),
    probe("system-zero-scale", "sample --system {sys_zeroscale} --out {tmp}/o --num 1 --steps 1", "latent_scale"),
    probe("system-negative-scale", "sample --system {sys_negscale} --out {tmp}/o --num 1 --steps 1", "latent_scale"),
    probe("system-bad-json", "sample --system {sys_badjson} --out {tmp}/o --num 1", "d2it.json"),
    probe("system-wrong-type", "sample --system {sys_strsize} --out {tmp}/o --num 1", "image_size"),
    probe("system-zero-classes", "sample --system {sys_zeroclasses} --out {tmp}/o --num 1", "num_classes"),
    probe("system-unknown-vae", "sample --system {sys_unknownvae} --out {tmp}/o --num 1 --steps 1", "dvae-zz"),
    probe("system-bad-sampler-steps", "sample --system {sys_badsteps} --out {tmp}/o --num 1 --steps 1", "steps"),
    probe("system-nan-beta", "sample --system {sys_nanbeta} --out {tmp}/o --num 1 --steps 1", "beta_end"),
    probe("system-no-weights", "sample --system {sys_noweights} --out {tmp}/o --num 1 --steps 1", "safetensors"),
    probe(
        "system-truncated-weights", "sample --system {sys_truncweights} --out {tmp}/o --num 1 --steps 1", "safetensors"
    ),
    probe("out-is-a-file", "sample --system {sys} --out {file} --num 1 --steps 1", "afile"),
    probe("out-under-a-file", "sample --system {sys} --out {file}/o --num 1 --steps 1", "afile"),
    probe("out-foreign-folder", "sample --system {sys} --out {userdir} --num 1 --steps 1", "not written by d2it"),
    probe("missing-system-option", "sample --out {tmp}/o", "--system"),
    probe("missing-out-option", "sample --system {sys}", "--out"),
    probe("unknown-option", f"{SAMPLE} --guidance 3", "--guidance"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_sample_rejects(run_probe, command, expect):
    run_probe(command, expect)
