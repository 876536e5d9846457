"""Bad inputs of `d2it encode` and `d2it thresholds`: exit 2, one `error:` line, no traceback."""

import pytest

from conftest import probe

ENCODE = "encode --system {sys} --data synthetic:4 --out {tmp}/cache --batch 4 --quiet"
THRESH = "thresholds --data synthetic:4 --out {tmp}/t.json --quiet"

PROBES = [
    probe("encode-batch-0", f"{ENCODE} --batch 0", "--batch"),
    probe("encode-shard-size-0", f"{ENCODE} --shard-size 0", "--shard-size"),
    probe("encode-workers-neg", f"{ENCODE} --workers -1", "--workers"),
    probe("encode-seed-neg", f"{ENCODE} --seed -5", "--seed"),
    probe("encode-seed-huge", f"{ENCODE} --seed 99999999999999999999999", "--seed"),
    probe("encode-dtype", f"{ENCODE} --dtype float8", "--dtype"),
    probe("encode-device", f"{ENCODE} --device tpu", "--device"),
    probe("encode-device-cuda", f"{ENCODE} --device cuda:0", "--device"),
    probe("encode-system-missing", "encode --system {missing} --data synthetic:4 --out {tmp}/c", "does not exist"),
    probe("encode-system-no-vae", "encode --system {novae} --data synthetic:4 --out {tmp}/c", "no VAE"),
    probe("encode-system-nan-scale", "encode --system {sys_nanscale} --data synthetic:4 --out {tmp}/c", "latent_scale"),
    probe(
        "encode-system-no-weights",
        "encode --system {sys_noweights} --data synthetic:4 --out {tmp}/c",
        "vae.safetensors",
    ),
    probe(
        "encode-system-truncated", "encode --system {sys_truncweights} --data synthetic:4 --out {tmp}/c", "safetensors"
    ),
    probe("encode-data-missing", "encode --system {sys} --data {missing} --out {tmp}/c", "does-not-exist"),
    probe("encode-data-empty", "encode --system {sys} --data {emptydir} --out {tmp}/c", "empty"),
    probe("encode-data-strict", "encode --system {sys} --data {badimages} --out {tmp}/c --strict-data", "broken.png"),
    probe("encode-data-synthetic-0", "encode --system {sys} --data synthetic:0 --out {tmp}/c", "synthetic"),
    probe("encode-data-symlink-loop", "encode --system {sys} --data {loopimages} --out {tmp}/c", "loop"),
    probe("encode-exists", "encode --system {cache_sys} --data synthetic:4 --out {cache}", "--overwrite"),
    probe("encode-out-file", "encode --system {sys} --data synthetic:4 --out {file}", "afile"),
    probe("encode-out-under-file", "encode --system {sys} --data synthetic:4 --out {file}/c", "afile"),
    probe(
        "encode-out-foreign",
        "encode --system {sys} --data synthetic:4 --out {userdir} --overwrite",
        "not written by d2it",
    ),
    probe("encode-missing-data", "encode --system {sys} --out {tmp}/c", "--data"),
    probe("thresholds-ratio-0", f"{THRESH} --ratio 0", "--ratio"),
    probe("thresholds-ratio-1", f"{THRESH} --ratio 1", "--ratio"),
    probe("thresholds-ratio-nan", f"{THRESH} --ratio nan", "--ratio"),
    probe("thresholds-grains-1", f"{THRESH} --grains 1", "--grains"),
    probe("thresholds-image-size-0", f"{THRESH} --image-size 0", "--image-size"),
    probe("thresholds-batch-0", f"{THRESH} --batch 0", "--batch"),
    probe("thresholds-limit-0", f"{THRESH} --limit 0", "--limit"),
    probe("thresholds-workers-neg", f"{THRESH} --workers -1", "--workers"),
    probe("thresholds-device", f"{THRESH} --device quantum", "--device"),
    probe("thresholds-data-missing", "thresholds --data {missing} --out {tmp}/t.json", "does-not-exist"),
    probe("thresholds-data-empty", "thresholds --data {emptydir} --out {tmp}/t.json", "empty"),
    probe("thresholds-system-missing", f"{THRESH} --system {{missing}}", "does not exist"),
    probe("thresholds-system-no-vae", f"{THRESH} --system {{novae}}", "no VAE"),
    probe("thresholds-system-bad-json", f"{THRESH} --system {{sys_badjson}}", "d2it.json"),
    probe("thresholds-image-size-differs", f"{THRESH} --system {{sys}} --image-size 64", "--image-size"),
    probe("thresholds-out-under-file", "thresholds --data synthetic:4 --out {file}/t.json --quiet", "afile"),
    probe("thresholds-out-is-dir", "thresholds --data synthetic:4 --out {emptydir} --quiet", "empty"),
    probe("thresholds-image-size-odd", f"{THRESH} --image-size 40", "40"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_encode_and_thresholds_reject(run_probe, command, expect):
    run_probe(command, expect)
