"""Broken weights, failed writes, absurd sizes and damaged data: exit 2, one `error:` line, the user's files intact.

Each class of issue 23 has probes here: weights that are not finite (or blew up) are never written
nor loaded; a write that fails (disk full, read-only, no permission) names the file and says nothing
was replaced; streams with nothing decodable, absurd sizes, malformed configs and manifests, damaged
cache shards and metric options are refused in one sentence; valid inputs that were refused are not.
"""

import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import check, expand, probe, run_main

GEN = "eval gen --samples {good_npz} --ref {good_npz} --feature-extractor vgg16"
TRAIN_GRAIN = "train grain --system {cache_sys} --cache {cache} --steps 1 --batch 2 --run-dir {tmp}/run --quiet"


def digest(folder) -> dict:
    """SHA-256 of every file under `folder` (the bytes a failed command must leave alone)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def run(paths, command):
    return run_main(expand(command, paths))


# ------------------------------------------------------------------------------- weights finite and sane
def _with_tensor(src, dst, part, value):
    shutil.copytree(src, dst)
    tensors = load_file(Path(dst) / f"{part}.safetensors")
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = torch.full_like(tensors[name], value)
    save_file(tensors, Path(dst) / f"{part}.safetensors")
    return name


@pytest.mark.parametrize("value,expect", [(float("nan"), "NaN or infinite"), (1e30, "size 1e+30")])
def test_a_system_with_broken_weights_does_not_load(paths, tmp_path, value, expect):
    name = _with_tensor(paths["sys"], tmp_path / "broken", "content", value)
    line = check(run(paths, f"sample --system {tmp_path}/broken --num 1 --steps 1 --out {{tmp}}/out"), expect)
    assert name in line and "content.safetensors" in line


def test_import_dit_refuses_a_checkpoint_with_nan_weights(paths, tmp_path):
    tensors = load_file(Path(paths["novae"]) / "content.safetensors")
    tensors["pos_embed"] = tensors["pos_embed"].clone()
    tensors["y_embedder.embedding_table.weight"] = torch.full_like(
        tensors["y_embedder.embedding_table.weight"], float("inf")
    )
    torch.save(tensors, tmp_path / "dit.pt")
    line = check(run(paths, f"import dit --checkpoint {tmp_path}/dit.pt --out {{tmp}}/s --num-heads 2"), "NaN")
    assert "y_embedder.embedding_table.weight" in line
    assert not (tmp_path / "s" / "d2it.json").exists()


def test_a_blown_up_dvae_never_overwrites_the_system(paths, tmp_path):
    shutil.copytree(paths["sys"], tmp_path / "sys")
    before = digest(tmp_path / "sys")
    result = run(
        paths,
        f"train dvae --system {tmp_path}/sys --data synthetic:4 --steps 1 --batch 2 --lr 1e30 --nan-policy skip-step "
        f"--lpips-random --run-dir {tmp_path}/run --quiet",
    )
    line = check(result, "training diverged")
    assert "grew from norm" in line
    assert digest(tmp_path / "sys") == before
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


# ------------------------------------------------------------------------------------- failed writes
def _fail_writes(monkeypatch, code, when=lambda path: True):
    """Make every safetensors write whose final path satisfies `when` fail with `code`."""
    import d2it.io

    real = d2it.io.save_file

    def failing(tensors, filename, metadata=None):
        if when(Path(filename)):
            raise OSError(code, os.strerror(code))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(d2it.io, "save_file", failing)


BUILD = (
    "build --backbone dit-s --image-size 32 --no-count --set backbone.depth=1 --set backbone.hidden_size=32 "
    "--set backbone.num_heads=2"
)


@pytest.mark.parametrize(
    "code,expect", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")]
)
def test_a_failed_write_over_a_system_leaves_it_intact(paths, tmp_path, monkeypatch, code, expect):
    shutil.copytree(paths["novae"], tmp_path / "s")
    before = digest(tmp_path / "s")
    _fail_writes(monkeypatch, code, lambda p: p.name.startswith(".content.safetensors"))
    line = check(run(paths, f"{BUILD} --out {tmp_path}/s --overwrite"), expect)
    assert f"{tmp_path}/s/content.safetensors" in line and "intact" in line
    assert digest(tmp_path / "s") == before


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(f"{BUILD} --out {{tmp}}/new", id="build"),
        pytest.param("encode --system {cache_sys} --data synthetic:4 --out {tmp}/cache --batch 4 --quiet", id="encode"),
        pytest.param(TRAIN_GRAIN, id="checkpoint"),
    ],
)
def test_disk_full_is_one_sentence_naming_the_file(paths, monkeypatch, command):
    _fail_writes(monkeypatch, errno.ENOSPC)
    line = check(run(paths, command), "no space left")
    assert "intact" in line


def test_disk_full_at_the_final_weights_write_keeps_the_system(paths, tmp_path, monkeypatch):
    shutil.copytree(paths["cache_sys"], tmp_path / "sys")
    before = digest(tmp_path / "sys")
    _fail_writes(monkeypatch, errno.ENOSPC, lambda p: p.parent == tmp_path / "sys")
    command = TRAIN_GRAIN.replace("{cache_sys}", str(tmp_path / "sys")) + " --save-to-system"
    line = check(run(paths, command), "no space left")
    assert f"{tmp_path}/sys/grain.safetensors" in line and "intact" in line
    assert digest(tmp_path / "sys") == before


# --------------------------------------------------------------------------------- one sentence each
@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """Webdataset shards with nothing decodable in them."""
    root = tmp_path_factory.mktemp("streams")
    (root / "empty.tar").write_bytes(b"")
    tarfile.open(root / "notar.tar", "w").close()
    (root / "corrupt.tar").write_bytes(b"garbage" * 200)
    with tarfile.open(root / "allbad.tar", "w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"{i:03d}.png")
            info.size = 9
            tar.addfile(info, io.BytesIO(b"not a png"))
    (root / "meta").mkdir()
    shutil.copy(root / "allbad.tar", root / "meta" / "a.tar")
    (root / "meta" / "classes.json").write_text("[1, 2, 3]")
    return root


@pytest.mark.parametrize(
    "shards,expect",
    [
        ("empty.tar", "holds no samples"),
        ("notar.tar", "holds no samples"),
        ("corrupt.tar", "holds no samples"),
        ("allbad.tar", "none of the 3 samples"),
        ("pipe:false", "holds no samples"),
        ("meta/a.tar", "classes.json"),
    ],
)
@pytest.mark.parametrize("command", ["train", "encode"])
def test_webdataset_streams_with_nothing_decodable_are_one_sentence(paths, streams, shards, expect, command):
    data = shards if shards.startswith("pipe:") else streams / shards
    if command == "train":
        line = f"train dvae --system {{sys}} --data wds:{data} --steps 1 --batch 2 --lpips-random --run-dir {{tmp}}/r"
    else:
        line = f"encode --system {{cache_sys}} --data wds:{data} --out {{tmp}}/c --quiet"
    check(run(paths, line), expect)


PROBES = [
    probe("sample-num-1e10", "sample --system {sys} --num 10000000000 --out {tmp}/o --steps 1", "memory"),
    probe("sample-num-1e20", "sample --system {sys} --num 100000000000000000000 --out {tmp}/o", "--num"),
    probe("sample-batch-huge", "sample --system {sys} --num 2 --batch 100000000000000000000 --out {tmp}/o", "--batch"),
    probe(
        "sas-num-1e10",
        "eval sample-and-score --system {sys} --ref {good_npz} --num 10000000000 --out {tmp}/o --metrics swd",
        "memory",
    ),
    probe("thresholds-grains-100", "thresholds --data synthetic:4 --grains 100 --out {tmp}/t.json", "grains"),
    probe(
        "thresholds-batch-huge",
        "thresholds --data synthetic:4 --batch 99999999999999999999 --out {tmp}/t.json",
        "--batch",
    ),
    probe(
        "encode-batch-huge",
        "encode --system {cache_sys} --data synthetic:4 --batch 99999999999999999999 --out {tmp}/c",
        "--batch",
    ),
    probe(
        "kid-subset-size-neg",
        f"{GEN} --metrics kid --set kid.subset_size=-1",
        "kid.subset_size",
    ),
    probe(
        "prc-neighborhood-0",
        f"{GEN} --metrics prc --set prc.neighborhood=0",
        "prc.neighborhood",
    ),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_absurd_sizes_and_options_are_refused(run_probe, command, expect):
    run_probe(command, expect)


@pytest.mark.parametrize(
    "config,expect",
    [
        ("[1, 2]", "not a diffusers config"),
        ('{"scaling_factor": "big"}', "scaling_factor"),
        ('{"scaling_factor": -1}', "scaling_factor"),
        ('{"norm_num_groups": "x"}', "norm_num_groups"),
        ("\xff\xfe", "config.json"),
    ],
)
def test_a_malformed_sd_vae_config_is_refused(paths, tmp_path, config, expect):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_bytes(config.encode("latin-1"))
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 16)
    check(run(paths, f"import sd-vae {tmp_path}/vae --out {{tmp}}/s --backbone dit-s"), expect)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"system": 7}', "\xff\xfe"])
def test_export_of_a_run_with_a_garbage_train_json_is_refused(paths, tmp_path, text):
    shutil.copytree(paths["run"], tmp_path / "run")
    (tmp_path / "run" / "train.json").write_bytes(text.encode("latin-1"))
    check(run(paths, f"export --run {tmp_path}/run --out {{tmp}}/x"), "train.json")


@pytest.mark.parametrize(
    "change,expect",
    [
        (lambda t: t["grain_map"].__setitem__(0, 7), "grain 7"),
        (lambda t: t["label"].__setitem__(0, 99), "label 99"),
        (lambda t: t.pop("label"), "lacks the tensor 'label'"),
    ],
    ids=["grain-7", "label-99", "missing-tensor"],
)
def test_a_damaged_cache_shard_is_named(paths, tmp_path, change, expect):
    shutil.copytree(paths["cache"], tmp_path / "cache")
    shard = next((tmp_path / "cache").glob("shard-*"))
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard)
    line = check(run(paths, TRAIN_GRAIN.replace("{cache}", str(tmp_path / "cache"))), expect)
    assert shard.name in line


def test_wandb_without_a_key_is_one_sentence(paths, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    line = check(run(paths, f"{TRAIN_GRAIN} --report-to wandb"), "wandb")
    assert "wandb login" in line and "WANDB_MODE=offline" in line


# ------------------------------------------------------------------ silent acceptance, valid inputs refused
def test_pack_counts_unreadable_files_apart(paths, tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"not a png")
    result = run(paths, f"pack --data {tmp_path}/imgs --out {tmp_path}/shards --quiet")
    assert result.code == 0, result.err
    assert "packed 3 images" in result.out
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0] and "broken.png" in warnings[0]
    assert json.loads((tmp_path / "shards" / "classes.json").read_text())["count"] == 3


def test_an_hf_split_that_does_not_exist_lists_the_splits(paths, tmp_path):
    datasets = pytest.importorskip("datasets")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "a.png")]}, features=datasets.Features({"image": datasets.Image()})
    )
    table.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(tmp_path / "two")
    dvae = "train dvae --system {sys} --steps 1 --batch 1 --lpips-random --run-dir {tmp}/r --data"
    check(run(paths, f"{dvae} hf:{tmp_path}/one:test"), "no split 'test'")
    line = check(run(paths, f"{dvae} hf:{tmp_path}/two:test"), "no split 'test'")
    assert "train, validation" in line


def test_a_read_only_cache_is_read_without_its_lock(paths, tmp_path, monkeypatch):
    from d2it_cli.locks import FolderLock

    shutil.copytree(paths["cache"], tmp_path / "cache")
    (tmp_path / "cache" / ".d2it.lock").unlink(missing_ok=True)
    before = digest(tmp_path / "cache")

    real = FolderLock._open

    def read_only(self):  # the cache's folder is read-only, the run directory is not
        if self.folder != tmp_path / "cache":
            return real(self)
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(FolderLock, "_open", read_only)
    result = run(paths, TRAIN_GRAIN.replace("{cache}", str(tmp_path / "cache")))
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:") and "EMA" not in line]
    assert len(warnings) == 1 and "without a lock" in warnings[0]
    assert digest(tmp_path / "cache") == before


def test_resume_with_the_same_data_spelt_differently_is_accepted(paths, tmp_path, monkeypatch):
    shutil.copytree(paths["run"], tmp_path / "run")
    cache = Path(paths["cache"])
    monkeypatch.chdir(cache.parent)
    command = (
        f"train grain --system {{cache_sys}} --cache ./{cache.name}/ --steps 2 --batch 2 --run-dir {tmp_path}/run "
        "--resume latest --quiet --sample-every 0"
    )
    result = run(paths, command)
    assert result.code == 0, result.err
