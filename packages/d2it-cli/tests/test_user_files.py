"""No user file is touched: every writer claims its folder, records what it wrote and never writes through a link.

Each test takes a snapshot of a folder (every path -> the sha256 of a file, "dir", or the target of a
symbolic link, which is never followed) before and after a command and compares them.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_evaluation import TINY, TinyExtractor, make_images, register_tiny

from d2it.errors import D2itError
from d2it_cli import outputs
from d2it_cli.locks import LOCK_NAME

TINY_NET = ["--set", "backbone.depth=2", "--set", "backbone.hidden_size=32", "--set", "backbone.num_heads=2"]
BUILD = ["build", "--vae", "none", "--backbone", "dit-s", "--image-size", "32", "--num-classes", "4", "--no-count"]
BUILD += TINY_NET


def snapshot(root) -> dict[str, str]:
    """Every path under `root` -> sha256 of a file, "dir", or "-> TARGET" for a symbolic link (never followed)."""
    root, found = Path(root), {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def user_folder(path: Path, *names) -> dict[str, str]:
    """A folder of a user's files (`names` besides notes.txt, some named like ours); its snapshot."""
    for name in ("notes.txt", "mine/deep.txt", *names):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(f"the user's {name}\n")
    return snapshot(path)


def subset(snap: dict, prefixes) -> dict:
    """The entries of a snapshot at or under any of `prefixes`."""
    return {k: v for k, v in snap.items() if any(k == p or k.startswith(f"{p}/") for p in prefixes)}


def untouched(folder, before: dict, *extra) -> bool:
    """The user's files of snapshot `before` (notes.txt, mine/ and `extra`) are in `folder`, byte for byte."""
    keys = ["notes.txt", "mine", *extra]
    return subset(snapshot(folder), keys) == subset(before, keys)


def pngs(folder: Path, n: int, size: int = 8) -> Path:
    """`n` small PNGs in folder/cat."""
    (folder / "cat").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (size, size), (40 * i, 0, 0)).save(folder / "cat" / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(d2it_cli, tiny_system_template, tmp_path_factory):
    """Shared inputs: a tiny system with a cache and a 2-step grain run, images, a DiT checkpoint, a reference."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("world")

    def cli(*args):
        result = CliRunner().invoke(d2it_cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    system = root / "system"
    shutil.copytree(tiny_system_template, system)
    cli("encode", "--system", system, "--data", "synthetic:8", "--out", root / "cache", "--batch", "4", "--quiet")
    train = ["train", "grain", "--system", system, "--cache", root / "cache", "--batch", "4", "--steps", "2"]
    cli(*train, "--ckpt-every", "1", "--quiet", "--workers", "0")
    cli(*BUILD, "--out", root / "dit")
    register_tiny()
    torch.save(TinyExtractor(TINY, ["feat"]).state_dict(), root / "tiny.pth")
    np.savez(root / "ref.npz", make_images(n=4, size=32, seed=8))
    paths = {
        "sys": system,
        "run": system / "runs" / "grain",
        "cache": root / "cache",
        "imgs": pngs(root / "imgs", 3),
        "ckpt": root / "dit" / "content.safetensors",
        "ref": root / "ref.npz",
        "weights": root / "tiny.pth",
    }
    return {k: str(v) for k, v in paths.items()}


def private_system(world, dest: Path) -> Path:
    """A copy of the world's system without its runs (training and encoding write into a system)."""
    shutil.copytree(world["sys"], dest, ignore=shutil.ignore_patterns("runs", outputs.MARKER, LOCK_NAME))
    return dest


# every writer, with {out} for its output folder; (command, takes --overwrite)
WRITERS = {
    "build": (" ".join(BUILD) + " --out {out}", True),
    "import-dit": ("import dit --checkpoint {ckpt} --num-heads 2 --out {out}", True),
    "export": ("export --run {run} --out {out}", True),
    "export-every": ("export --run {run} --every --out {out}", True),
    "pack": ("pack --data {imgs} --out {out} --quiet", False),
    "encode": ("encode --system {sys} --data synthetic:4 --batch 4 --quiet --out {out}", True),
    "sample": ("sample --system {sys} --num 1 --steps 1 --quiet --out {out}", False),
    "eval": (
        "eval sample-and-score --system {sys} --ref {ref} --num 2 --steps 1 --batch 2 --metrics fid --device cpu "
        f"--feature-extractor {TINY} --inception-weights {{weights}} --quiet --out {{out}}",
        False,
    ),
    "train": (
        "train grain --system {sys} --cache {cache} --steps 1 --batch 4 --quiet --workers 0 --run-dir {out}",
        False,
    ),
    "demo": ("demo --quick --quiet --out {out} --plan dvae_steps=1", False),
}


def command(world, name: str, out, overwrite: bool = False) -> list[str]:
    """The argument list of writer `name` into `out`."""
    line, takes = WRITERS[name]
    args = line.format(out=out, **world).split()
    return args + (["--overwrite"] if overwrite and takes else [])


# --------------------------------------------------------------------------------------------- refusals
WITH_AND_WITHOUT = [
    pytest.param(w, o, id=f"{w}-overwrite" if o else w)
    for w in sorted(WRITERS)
    for o in (False, True)[: 1 + WRITERS[w][1]]
]


@pytest.mark.parametrize("writer, overwrite", WITH_AND_WITHOUT)
def test_a_users_folder_is_refused_and_left_exactly_as_it_was(world, run_cli, tmp_path, writer, overwrite):
    user = tmp_path / "user"
    user_folder(user, "classes.json", "manifest.json", "d2it.json", "samples/000000_class0.png", "runs/x.txt")
    before = snapshot(tmp_path)
    result = run_cli(*command(world, writer, user, overwrite))
    assert result.exit_code == 2, result.output
    assert "was not written by d2it" in result.output or "holds no d2it system" in result.output
    assert snapshot(tmp_path) == before  # no marker, lock or temporary, in it or beside it


@pytest.mark.parametrize("link", [LOCK_NAME, outputs.MARKER])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_lock_or_marker_that_is_a_link_is_never_written_through(world, run_cli, tmp_path, writer, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text('{"command": "x", "files": []}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / link).symlink_to(outside / "precious.txt")
    before = snapshot(tmp_path)
    result = run_cli(*command(world, writer, out, overwrite=True))
    assert result.exit_code == 2, result.output
    assert "link" in result.output or "plain file" in result.output
    assert snapshot(tmp_path) == before


def test_a_hard_linked_lock_is_never_truncated(world, run_cli, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    os.link(tmp_path / "precious.txt", out / LOCK_NAME)
    before = snapshot(tmp_path)
    result = run_cli(*command(world, "sample", out))
    assert result.exit_code == 2 and "not a plain file of its own" in result.output, result.output
    assert snapshot(tmp_path) == before


def test_a_failure_after_the_claim_leaves_nothing_behind(world, run_cli, tmp_path, monkeypatch):
    claims, claimed = [], outputs.claimed

    def spy(folder, *args, **kwargs):
        claims.append(Path(folder).name)
        return claimed(folder, *args, **kwargs)

    monkeypatch.setattr(outputs, "claimed", spy)
    broken = private_system(world, tmp_path / "broken")
    (broken / "content.safetensors").write_bytes(b"truncated")
    runs = [
        ("encode", "--system", world["sys"], "--data", tmp_path / "missing", "--out", tmp_path / "new" / "cache"),
        ("sample", "--system", broken, "--num", "1", "--steps", "1", "--out", tmp_path / "new" / "samples"),
        ("train", "grain", "--system", world["sys"], "--cache", world["cache"], "--steps", "1", "--resume",
         tmp_path / "missing", "--run-dir", tmp_path / "new" / "run"),
    ]  # fmt: skip
    for args in runs:
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "new").exists(), args[0]
    assert claims == ["cache", "samples"]  # each failed after its claim; train reads --resume before it claims
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("encode", "--system", world["sys"], "--data", tmp_path / "missing", "--out", empty).exit_code == 2
    assert snapshot(empty) == {}


# ------------------------------------------------------------------------------------- our own folders
def test_system_directories_replace_only_the_systems_files(world, run_cli, tmp_path):
    out = tmp_path / "sys"
    assert run_cli(*BUILD, "--out", out).exit_code == 0
    first = snapshot(out)
    mine = user_folder(out, "runs/grain/log.jsonl", "eval/metrics.json")
    refused = run_cli(*BUILD, "--set", "backbone.depth=1", "--out", out)
    assert refused.exit_code == 2 and "already holds a system; pass --overwrite" in refused.output
    assert snapshot(out) == mine and set(first) < set(mine)
    assert run_cli(*BUILD, "--set", "backbone.depth=1", "--out", out, "--overwrite").exit_code == 0
    assert untouched(out, mine, "runs", "eval")
    assert json.loads((out / "d2it.json").read_text())["system"]["options"]["backbone"]["depth"] == 1
    # a system of another shape: the earlier system's parts it does not have go, the user's files stay
    full = private_system(world, tmp_path / "full")
    user_folder(full, "runs/grain/log.jsonl")
    mine = snapshot(full)
    result = run_cli("import", "dit", "--checkpoint", world["ckpt"], "--num-heads", "2", "--out", full, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (full / "vae.safetensors").exists() and not (full / "grain.safetensors").exists()
    assert untouched(full, mine, "runs")


def test_export_overwrite_never_deletes_runs_or_a_users_file(world, run_cli, tmp_path):
    copy = tmp_path / "copy"  # the system folder copied, its run with it; the run's record names the original
    shutil.copytree(world["sys"], copy, ignore=shutil.ignore_patterns(LOCK_NAME))
    user_folder(copy)
    keep = ["runs", "notes.txt", "mine"]
    before = snapshot(copy)
    refused = run_cli("export", "--run", copy / "runs" / "grain", "--out", copy)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert snapshot(copy) == before
    result = run_cli("export", "--run", copy / "runs" / "grain", "--step", "1", "--out", copy, "--overwrite")
    assert result.exit_code == 0, result.output
    after = snapshot(copy)
    assert subset(after, keep) == subset(before, keep)
    assert after["grain.safetensors"] != before["grain.safetensors"]
    assert json.loads((copy / "d2it.json").read_text())["extra"]["exported_from"]["step"] == 1
    # the run's own system is refused, whatever --overwrite says
    own = snapshot(world["sys"])
    result = run_cli("export", "--run", world["run"], "--out", world["sys"], "--overwrite")
    assert result.exit_code == 2 and "own system directory" in result.output
    assert snapshot(world["sys"]) == own
    # --every: a rerun into our own folder adds nothing and keeps the user's file
    every = tmp_path / "every"
    assert run_cli("export", "--run", world["run"], "--every", "--out", every).exit_code == 0
    mine = user_folder(every)
    assert run_cli("export", "--run", world["run"], "--every", "--out", every).exit_code == 0
    assert snapshot(every) == mine


def test_encode_and_pack_reruns_replace_only_their_files(world, run_cli, tmp_path):
    system = private_system(world, tmp_path / "system")
    cache = tmp_path / "cache"
    encode = ["encode", "--system", system, "--batch", "2", "--shard-size", "2", "--quiet", "--out", cache]
    assert run_cli(*encode, "--data", "synthetic:8").exit_code == 0
    mine = user_folder(cache, "shards/shard-0-000000.safetensors")
    before = snapshot(cache)
    refused = run_cli(*encode, "--data", "synthetic:4")
    assert refused.exit_code == 2 and "already exists; pass --overwrite" in refused.output
    assert snapshot(cache) == before
    assert run_cli(*encode, "--data", "synthetic:4", "--overwrite").exit_code == 0
    assert untouched(cache, mine, "shards")
    listed = {s["file"] for s in json.loads((cache / "manifest.json").read_text())["shards"]}
    assert {p.name for p in cache.glob("shard-*.safetensors")} == listed and len(listed) == 2
    # pack: a smaller rerun leaves no stale shard and keeps the user's file
    shards = tmp_path / "shards"
    pack = ["pack", "--shard-size", "1", "--no-shuffle", "--quiet", "--out", shards]
    assert run_cli(*pack, "--data", world["imgs"]).exit_code == 0
    mine = user_folder(shards, "train-000009.tar")
    assert run_cli(*pack, "--data", pngs(tmp_path / "two", 2)).exit_code == 0
    assert sorted(p.name for p in shards.glob("train-00000[0-8].tar")) == ["train-000000.tar", "train-000001.tar"]
    assert json.loads((shards / "classes.json").read_text())["count"] == 2
    assert untouched(shards, mine, "train-000009.tar")


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_sample_reruns_leave_no_stale_files_wherever_they_run_from(world, run_cli, tmp_path, monkeypatch, relative):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    base = ["sample", "--system", world["sys"], "--steps", "1", "--batch", "4", "--quiet"]
    out = tmp_path / "out"
    assert run_cli(*base, "--num", "4", "--npz", "--out", "out" if relative else out).exit_code == 0
    mine = user_folder(out, "samples/keep.png")
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same folder by another relative path
    for num, npz in ((2, ["--npz"]), (1, [])):
        result = run_cli(*base, "--num", num, *npz, "--out", "../out" if relative else out)
        assert result.exit_code == 0, result.output
        assert len(list((out / "samples").glob("*_class*.png"))) == num
        assert json.loads((out / "samples.json").read_text())["num"] == num
        if npz:
            assert len(np.load(out / "samples.npz")["arr_0"]) == num
        else:
            assert not (out / "samples.npz").exists()
        assert untouched(out, mine, "samples/keep.png")
    listed = json.loads((out / outputs.MARKER).read_text())["files"]
    assert all(not os.path.isabs(f) and not f.startswith(("out/", "..")) for f in listed)
    assert "samples/keep.png" not in listed and "samples.npz" not in listed


def test_sample_never_writes_through_a_linked_samples_folder(world, run_cli, tmp_path):
    outside = tmp_path / "outside"
    (outside / "photos").mkdir(parents=True)
    (outside / "photos" / "000000_class0.png").write_text("a user's picture\n")
    out = tmp_path / "out"
    base = ["sample", "--system", world["sys"], "--num", "1", "--steps", "1", "--quiet", "--out", out]
    assert run_cli(*base).exit_code == 0
    shutil.rmtree(out / "samples")
    (out / "samples").symlink_to(outside / "photos")
    before = snapshot(tmp_path)
    result = run_cli(*base)
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert snapshot(tmp_path) == before


def test_eval_rerun_keeps_a_users_file(world, run_cli, tmp_path):
    out = tmp_path / "eval"
    assert run_cli(*command(world, "eval", out)).exit_code == 0
    mine = user_folder(out, "shards/notes.txt")
    assert run_cli(*command(world, "eval", out)).exit_code == 0
    assert untouched(out, mine, "shards/notes.txt")
    assert "metrics.json" in json.loads((out / outputs.MARKER).read_text())["files"]


def test_training_keeps_a_users_file_and_never_follows_a_linked_log(world, run_cli, tmp_path):
    system = private_system(world, tmp_path / "system")
    run = tmp_path / "run"
    train = ["train", "grain", "--system", system, "--cache", world["cache"], "--batch", "4", "--steps", "1"]
    train += ["--quiet", "--workers", "0", "--run-dir", run]
    assert run_cli(*train).exit_code == 0
    mine = user_folder(run)
    train.append("--overwrite")  # a new run in the same folder: the earlier one's files go, a user's stay
    assert run_cli(*train).exit_code == 0
    assert untouched(run, mine)
    outside = tmp_path / "outside.jsonl"
    outside.write_text("a user's log\n")
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(outside)
    before = snapshot(tmp_path)
    result = run_cli(*train)  # --overwrite: refused before any file of the earlier run is deleted
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------- the rule
def test_output_paths_are_checked_and_recorded_relative_to_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with outputs.claimed("out", "sample") as out:
        with out.append("log.jsonl") as f:
            f.write("x\n")
        out.path("samples/a.png").write_text("ours")
    assert json.loads(Path("out", outputs.MARKER).read_text())["files"] == ["log.jsonl", "samples/a.png"]
    Path("out/samples/user.png").write_text("theirs")
    (tmp_path / "target").write_text("precious")
    with pytest.raises(D2itError, match="not written by d2it"):
        with outputs.claimed("out", "sample") as out:
            out.path("samples/user.png")
    os.symlink(tmp_path / "target", "out/samples/b.png")
    with pytest.raises(D2itError, match="symbolic link"):
        with outputs.claimed("out", "sample") as out:
            out.path("samples/b.png")
    os.unlink("out/samples/b.png")
    with outputs.claimed(tmp_path / "out", "sample"):
        pass  # writes nothing: the earlier run's files go, the user's stays
    left = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert left == sorted([LOCK_NAME, outputs.MARKER, "samples", "user.png"])
    assert (tmp_path / "target").read_text() == "precious"
    with pytest.raises(D2itError, match="not of `d2it pack`"):
        outputs.claim("out", "pack")
