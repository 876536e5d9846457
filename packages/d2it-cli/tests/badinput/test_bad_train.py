"""Bad inputs of `d2it train dvae|grain|content`: exit 2, one `error:` line, no traceback."""

import pytest

from conftest import probe

DVAE = "train dvae --system {sys} --data synthetic:4 --steps 1 --batch 2 --run-dir {tmp}/run --lpips-random"
GRAIN = "train grain --system {cache_sys} --cache {cache} --steps 1 --batch 2 --run-dir {tmp}/run"
CONTENT = "train content --system {cache_sys} --cache {cache} --steps 1 --batch 2 --run-dir {tmp}/run"

PROBES = [
    # numbers every trainer shares
    *[
        probe(f"{t}-{name}", f"{cmd} {opt}", flag)
        for t, cmd in (("dvae", DVAE), ("grain", GRAIN), ("content", CONTENT))
        for name, opt, flag in (
            ("lr-inf", "--lr inf", "--lr"),
            ("lr-nan", "--lr nan", "--lr"),
            ("lr-neg", "--lr -1e-4", "--lr"),
            ("lr-zero", "--lr 0", "--lr"),
            ("batch-0", "--batch 0", "--batch"),
            ("grad-accum-0", "--grad-accum 0", "--grad-accum"),
            ("steps-0", "--steps 0", "--steps"),
            ("epochs-nan", "--epochs nan", "--epochs"),
            ("epochs-neg", "--epochs -1", "--epochs"),
            ("keep-neg", "--keep -1", "--keep"),
            ("keep-0", "--keep 0", "--keep"),
            ("max-grad-norm-nan", "--max-grad-norm nan", "--max-grad-norm"),
            ("max-grad-norm-neg", "--max-grad-norm -1", "--max-grad-norm"),
            ("ema-decay-2", "--ema-decay 2", "--ema-decay"),
            ("ema-decay-nan", "--ema-decay nan", "--ema-decay"),
            ("seed-neg", "--seed -1", "--seed"),
            ("seed-65-bits", "--seed 18446744073709551616", "--seed"),
            ("device-bogus", "--device bogus", "--device"),
            ("device-cuda", "--device cuda:7", "--device"),
            ("log-every-0", "--log-every 0", "--log-every"),
            ("workers-neg", "--workers -2", "--workers"),
            ("warmup-text", "--warmup soon", "--warmup"),
            ("warmup-neg", "--warmup -5", "--warmup"),
            ("precision", "--precision fp8", "--precision"),
            ("nan-policy", "--nan-policy ignore", "--nan-policy"),
            ("run-dir-under-file", "--run-dir {file}/run", "afile"),
            ("resume-missing", "--resume latest", "no checkpoint"),
            ("run-dir-file", "--run-dir {file}", "afile"),
        )
    ],
    # stage 1
    probe("dvae-kl-weight-nan", f"{DVAE} --kl-weight nan", "--kl-weight"),
    probe("dvae-kl-weight-neg", f"{DVAE} --kl-weight -1", "--kl-weight"),
    probe("dvae-perceptual-inf", f"{DVAE} --perceptual-weight inf", "--perceptual-weight"),
    probe("dvae-disc-start-neg", f"{DVAE} --disc-start -1", "--disc-start"),
    probe("dvae-data-missing", "train dvae --system {sys} --data {missing} --steps 1", "does-not-exist"),
    probe("dvae-data-empty", "train dvae --system {sys} --data {emptydir} --steps 1 --lpips-random", "empty"),
    probe(
        "dvae-data-bad-images",
        "train dvae --system {sys} --data {badimages} --steps 1 --lpips-random --strict-data",
        "broken.png",
    ),
    probe("dvae-data-scheme", "train dvae --system {sys} --data gizmo:x --steps 1", "gizmo"),
    probe("dvae-synthetic-count", "train dvae --system {sys} --data synthetic:-3 --steps 1", "synthetic"),
    probe(
        "dvae-lpips-weights-missing",
        f"{DVAE.replace(' --lpips-random', '')} --lpips-weights {{missing}}",
        "does-not-exist",
    ),
    probe(
        "dvae-lpips-weights-bad",
        f"{DVAE.replace(' --lpips-random', '')} --lpips-weights {{bad_weights}}",
        "weights.pth",
    ),
    probe("dvae-no-vae", "train dvae --system {novae} --data synthetic:4 --steps 1", "no VAE"),
    probe("dvae-system-missing", "train dvae --system {missing} --data synthetic:4 --steps 1", "does not exist"),
    probe("dvae-system-nan-scale", "train dvae --system {sys_nanscale} --data synthetic:4 --steps 1", "latent_scale"),
    probe(
        "dvae-system-no-weights", "train dvae --system {sys_noweights} --data synthetic:4 --steps 1", "vae.safetensors"
    ),
    probe("dvae-no-length", "train dvae --system {sys} --data synthetic:4", "--steps"),
    probe(
        "dvae-batch-too-big",
        "train dvae --system {sys} --data synthetic:4 --steps 1 --batch 64 --lpips-random --run-dir {tmp}/run",
        "fewer than one",
    ),
    # stage 2
    probe("grain-no-vae", "train grain --system {novae} --cache {cache} --steps 1", "no VAE"),
    probe("grain-cache-missing", "train grain --system {cache_sys} --cache {missing} --steps 1", "does not exist"),
    probe(
        "grain-cache-no-manifest", "train grain --system {cache_sys} --cache {cache_nomanifest} --steps 1", "manifest"
    ),
    probe("grain-cache-bad-json", f"{GRAIN.replace('{cache}', '{cache_badjson}')}", "manifest.json"),
    probe("grain-cache-list", f"{GRAIN.replace('{cache}', '{cache_list}')}", "manifest.json"),
    probe("grain-cache-count-text", f"{GRAIN.replace('{cache}', '{cache_strcount}')}", "count"),
    probe("grain-cache-count-neg", f"{GRAIN.replace('{cache}', '{cache_negcount}')}", "count"),
    probe("grain-cache-format", f"{GRAIN.replace('{cache}', '{cache_format}')}", "format"),
    probe("grain-cache-escape", f"{GRAIN.replace('{cache}', '{cache_escape}')}", "outside"),
    probe("grain-cache-absolute", f"{GRAIN.replace('{cache}', '{cache_absolute}')}", "outside"),
    probe("grain-cache-shards-text", f"{GRAIN.replace('{cache}', '{cache_shardstr}')}", "shards"),
    probe("grain-cache-no-grains", f"{GRAIN.replace('{cache}', '{cache_nograins}')}", "grains"),
    probe("grain-cache-nan-scale", f"{GRAIN.replace('{cache}', '{cache_nanscale}')}", "latent_scale"),
    probe("grain-cache-posterior", f"{GRAIN.replace('{cache}', '{cache_posterior}')}", "posterior"),
    probe("grain-cache-missing-shard", f"{GRAIN.replace('{cache}', '{cache_missingshard}')}", "shard"),
    probe("grain-cache-damaged-shard", f"{GRAIN.replace('{cache}', '{cache_damagedshard}')}", "shard"),
    probe(
        "grain-cache-other-vae",
        "train grain --system {sys_othervae} --cache {cache} --steps 1 --batch 2 --run-dir {tmp}/r",
        "other DVAE weights",
    ),
    probe("grain-weight-decay-neg", f"{GRAIN} --weight-decay -1", "--weight-decay"),
    probe("content-fine-ratio", f"{CONTENT} --grain-source random --fine-ratio 1.5", "--fine-ratio"),
    probe("content-fine-ratio-nan", f"{CONTENT} --grain-source random --fine-ratio nan", "--fine-ratio"),
    probe("content-grain-source", f"{CONTENT} --grain-source psychic", "--grain-source"),
    probe("content-sample-steps-0", f"{CONTENT} --sample-steps 0", "--sample-steps"),
    # resuming
    probe("resume-garbage-state", f"{GRAIN} --resume {{run_garbage}}", "state.pt"),
    probe("resume-state-list", f"{GRAIN} --resume {{run_statelist}}", "state.pt"),
    probe("resume-step-text", f"{GRAIN} --resume {{run_strstep}}", "step"),
    probe("resume-step-neg", f"{GRAIN} --resume {{run_negstep}}", "step"),
    probe("resume-no-optimizer", f"{GRAIN} --resume {{run_noopt}}", "optimizer"),
    probe("resume-optimizers-list", f"{GRAIN} --resume {{run_optlist}}", "optimizer"),
    probe("resume-other-data", f"{GRAIN} --resume {{run_otherdata}}", "data"),
    probe("resume-other-trainer", f"{GRAIN} --resume {{run_othertask}}", "dvae"),
    probe("resume-latest-escape", f"{GRAIN} --resume {{run_escape}}", "latest"),
    probe("resume-step-float", f"{GRAIN} --resume {{run_floatstep}}", "step"),
    probe("resume-bad-weights", f"{GRAIN} --resume {{run_badweights}}", "safetensors"),
    probe("resume-other-seed", f"{GRAIN} --steps 2 --seed 9 --resume {{run}}", "--seed"),
    probe("resume-missing", f"{GRAIN} --resume {{missing}}", "does-not-exist"),
    probe("resume-other-trainer-run", f"{CONTENT} --resume {{run}}", "grain"),
    probe("train-no-subcommand-option", "train --colour", "--colour"),
    # the run directory
    probe("grain-run-dir-foreign", GRAIN.replace("{tmp}/run", "{userdir}"), "not written by d2it"),
    probe("grain-run-dir-file", GRAIN.replace("{tmp}/run", "{file}"), "afile"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_train_rejects(run_probe, command, expect):
    run_probe(command, expect)
