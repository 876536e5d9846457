"""Bad inputs of `d2it export`, `d2it pack`, `d2it import dit|sd-vae` and `d2it push`: exit 2, one `error:` line."""

import pytest

from conftest import probe

PROBES = [
    probe("export-run-missing", "export --run {missing} --out {tmp}/x", "does-not-exist"),
    probe("export-step-text", "export --run {run} --step soon --out {tmp}/x", "soon"),
    probe("export-step-missing", "export --run {run} --step 99 --out {tmp}/x", "99"),
    probe("export-state-garbage", "export --run {run_garbage} --out {tmp}/x", "state.pt"),
    probe("export-latest-escape", "export --run {run_escape} --out {tmp}/x", "latest"),
    probe("export-out-file", "export --run {run} --out {file}", "afile"),
    probe("export-out-foreign", "export --run {run} --out {userdir} --overwrite", "holds no d2it system"),
    probe("export-every-out-foreign", "export --run {run} --every --out {userdir}", "not written by d2it"),
    probe("pack-shard-size-0", "pack --data {loopimages} --out {tmp}/p --shard-size 0", "--shard-size"),
    probe("pack-seed-neg", "pack --data {loopimages} --out {tmp}/p --seed -1", "--seed"),
    probe("pack-data-missing", "pack --data {missing} --out {tmp}/p", "does-not-exist"),
    probe("pack-data-empty", "pack --data {emptydir} --out {tmp}/p --quiet", "empty"),
    probe("pack-data-loop", "pack --data {loopimages} --out {tmp}/p --quiet", "loop"),
    probe("pack-out-file", "pack --data {badimages} --out {file}", "afile"),
    probe("pack-out-foreign", "pack --data {badimages} --out {userdir}", "not written by d2it"),
    probe(
        "import-dit-out-foreign",
        "import dit --checkpoint {bad_weights} --out {userdir} --overwrite",
        "holds no d2it system",
    ),
    probe("import-dit-missing", "import dit --checkpoint {missing} --out {tmp}/s", "does-not-exist"),
    probe("import-dit-garbage", "import dit --checkpoint {bad_weights} --out {tmp}/s", "weights.pth"),
    probe("import-dit-npz", "import dit --checkpoint {garbage_npz} --out {tmp}/s", "garbage.npz"),
    probe("import-dit-heads-0", "import dit --checkpoint {bad_weights} --out {tmp}/s --num-heads 0", "--num-heads"),
    probe("import-sd-vae-missing", "import sd-vae {missing} --out {tmp}/s", "does-not-exist"),
    probe("import-sd-vae-scale-nan", "import sd-vae {emptydir} --out {tmp}/s --latent-scale nan", "--latent-scale"),
    probe("import-sd-vae-scale-0", "import sd-vae {emptydir} --out {tmp}/s --latent-scale 0", "--latent-scale"),
    probe("import-sd-vae-size-0", "import sd-vae {emptydir} --out {tmp}/s --image-size 0", "--image-size"),
    probe("import-unknown", "import unet --out {tmp}/s", "unet"),
    probe("push-missing-system", "push {missing} org/name --dry-run", "does not exist"),
    probe("push-bad-system", "push {sys_badjson} org/name --dry-run", "d2it.json"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_interop_commands_reject(run_probe, command, expect):
    run_probe(command, expect)
