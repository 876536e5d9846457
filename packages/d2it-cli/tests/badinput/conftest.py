"""The bad-input suite: every probe runs `d2it` in-process through the console script's entry point.

A probe is one line of a table: an id, the command line (with {placeholders} for prepared files)
and a fragment the single `error:` line must contain. `check` asserts what every user error
gives: exit code 2, exactly one `error:` line on stderr, and no traceback.
"""

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from d2it_cli.main import main


class Result:
    """Exit code and captured output of one run."""

    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def error_lines(self):
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def run_main(argv) -> Result:
    """`d2it ARGV` in this process, exactly as the `d2it` console script runs it (sys.exit(main()))."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # what the interpreter prints for an uncaught exception
            traceback.print_exc()
            code = 1
    return Result(code, out.getvalue(), err.getvalue())


def probe(id, command, expect=""):
    """One row of a probe table."""
    return pytest.param(command, expect, id=id)


def check(result: Result, expect: str = ""):
    """Exit 2, exactly one `error:` line containing `expect` (case-insensitive) and no traceback."""
    detail = f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert "Traceback" not in result.err, detail
    assert result.code == 2, detail
    lines = result.error_lines()
    assert len(lines) == 1, detail
    assert expect.lower() in lines[0].lower(), detail
    return lines[0]


def expand(command: str, paths: dict) -> list[str]:
    """Split a probe's command line and fill in its {placeholders}."""
    return [part.format(**paths) for part in shlex.split(command)]


# --------------------------------------------------------------------------------------------- fixtures
def _write_record(src: Path, dst: Path, change):
    shutil.copytree(src, dst)
    doc = json.loads((dst / "d2it.json").read_text())
    change(doc)
    (dst / "d2it.json").write_text(json.dumps(doc))
    return dst


def _set_system(key, value):
    def change(doc):
        doc["system"][key] = value

    return change


@pytest.fixture(scope="session")
def bad_files(tiny_system_template, tmp_path_factory):
    """Every broken input the probes name, prepared once: systems, caches, checkpoints, images, arrays."""
    from d2it_cli.main import load_registry, make_cli

    root = tmp_path_factory.mktemp("bad")
    good = tiny_system_template
    p = {"sys": str(good)}
    (root / "afile").write_text("not a directory\n")
    p["file"] = str(root / "afile")
    (root / "empty").mkdir()
    p["emptydir"] = str(root / "empty")
    p["missing"] = str(root / "does-not-exist")

    # systems with a broken d2it.json
    variants = {
        "sys_nanscale": _set_system("latent_scale", float("nan")),
        "sys_zeroscale": _set_system("latent_scale", 0.0),
        "sys_negscale": _set_system("latent_scale", -1.0),
        "sys_strsize": _set_system("image_size", "big"),
        "sys_zerosize": _set_system("image_size", 0),
        "sys_floatsize": _set_system("image_size", 32.5),
        "sys_zeroclasses": _set_system("num_classes", 0),
        "sys_boolclasses": _set_system("num_classes", True),
        "sys_badoptions": _set_system("options", ["vae"]),
        "sys_optionstr": _set_system("options", {"vae": "wide"}),
        "sys_nanthresh": _set_system("thresholds", [float("nan")]),
        "sys_strthresh": _set_system("thresholds", "high"),
        "sys_descthresh": _set_system("thresholds", [2.0, 1.0]),
        "sys_vaeint": _set_system("vae", 7),
        "sys_unknownvae": _set_system("vae", "dvae-zz"),
        "sys_unknownfield": _set_system("colour", "red"),
        "sys_badsteps": lambda doc: doc["system"]["options"]["sampler"].update(steps=-1),
        "sys_nanbeta": lambda doc: doc["system"]["options"]["schedule"].update(beta_end=float("nan")),
        "sys_format": lambda doc: doc.update(format=99),
        "sys_nosystem": lambda doc: doc.pop("system"),
        "sys_systemlist": lambda doc: doc.update(system=[1, 2]),
    }
    for name, change in variants.items():
        p[name] = str(_write_record(good, root / name, change))
    for name, text in {"sys_badjson": "{not json", "sys_jsonlist": "[1, 2]", "sys_emptyjson": ""}.items():
        shutil.copytree(good, root / name)
        (root / name / "d2it.json").write_text(text)
        p[name] = str(root / name)
    shutil.copytree(good, root / "sys_binaryjson")
    (root / "sys_binaryjson" / "d2it.json").write_bytes(b"\xff\xfe\x00garbage")
    p["sys_binaryjson"] = str(root / "sys_binaryjson")
    shutil.copytree(good, root / "sys_noweights")
    (root / "sys_noweights" / "vae.safetensors").unlink()
    (root / "sys_noweights" / "content.safetensors").unlink()
    p["sys_noweights"] = str(root / "sys_noweights")
    shutil.copytree(good, root / "sys_truncweights")
    for part in ("vae", "content", "grain"):
        f = root / "sys_truncweights" / f"{part}.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    p["sys_truncweights"] = str(root / "sys_truncweights")
    shutil.copytree(good, root / "sys_othervae")
    from safetensors.torch import load_file, save_file

    tensors = load_file(root / "sys_othervae" / "vae.safetensors")
    first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, root / "sys_othervae" / "vae.safetensors")
    p["sys_othervae"] = str(root / "sys_othervae")
    (root / "nosys").mkdir()
    p["nosys"] = str(root / "nosys")

    # a plain DiT without a VAE
    cli = make_cli(load_registry())
    novae = root / "novae"
    args = [
        "build",
        "--backbone",
        "dit-s",
        "--image-size",
        "32",
        "--num-classes",
        "4",
        "--no-count",
        "--out",
        novae,
        "--set",
        "backbone.depth=1",
        "--set",
        "backbone.hidden_size=32",
        "--set",
        "backbone.num_heads=2",
    ]
    assert run_main(args).code == 0
    p["novae"] = str(novae)
    del cli

    # a latent cache and broken copies of it
    cache_sys = root / "cache_sys"
    shutil.copytree(good, cache_sys)
    cache = root / "cache"
    r = run_main(["encode", "--system", cache_sys, "--data", "synthetic:4", "--out", cache, "--batch", "4", "--quiet"])
    assert r.code == 0, r.err
    p["cache_sys"], p["cache"] = str(cache_sys), str(cache)

    def broken_cache(name, change):
        dst = root / name
        shutil.copytree(cache, dst)
        doc = json.loads((dst / "manifest.json").read_text())
        change(doc, dst)
        if doc is not None:
            (dst / "manifest.json").write_text(json.dumps(doc))
        p[name] = str(dst)

    broken_cache("cache_strcount", lambda d, _: d.update(count="many"))
    broken_cache("cache_negcount", lambda d, _: d.update(count=-4))
    broken_cache("cache_format", lambda d, _: d.update(format=7))
    broken_cache("cache_escape", lambda d, _: d["shards"][0].update(file="../cache/" + d["shards"][0]["file"]))
    broken_cache("cache_absolute", lambda d, _: d["shards"][0].update(file="/etc/passwd"))
    broken_cache("cache_shardstr", lambda d, _: d.update(shards="all"))
    broken_cache("cache_nograins", lambda d, _: d.pop("grains"))
    broken_cache("cache_nanscale", lambda d, _: d.update(latent_scale=float("nan")))
    broken_cache("cache_posterior", lambda d, _: d.update(posterior="mystery"))
    broken_cache("cache_missingshard", lambda d, dst: [f.unlink() for f in dst.glob("shard-*")])
    broken_cache("cache_damagedshard", lambda d, dst: [f.write_bytes(b"\x00" * 64) for f in dst.glob("shard-*")])
    broken_cache("cache_otherscale", lambda d, _: d.update(latent_scale=d["latent_scale"] * 2))
    shutil.copytree(cache, root / "cache_badjson")
    (root / "cache_badjson" / "manifest.json").write_text("{{{")
    p["cache_badjson"] = str(root / "cache_badjson")
    shutil.copytree(cache, root / "cache_list")
    (root / "cache_list" / "manifest.json").write_text("[]")
    p["cache_list"] = str(root / "cache_list")
    shutil.copytree(cache, root / "cache_nomanifest")
    (root / "cache_nomanifest" / "manifest.json").unlink()
    p["cache_nomanifest"] = str(root / "cache_nomanifest")

    # a run with a checkpoint, and tampered copies
    run = root / "run"
    r = run_main(
        [
            "train",
            "grain",
            "--system",
            cache_sys,
            "--cache",
            cache,
            "--steps",
            "1",
            "--batch",
            "2",
            "--run-dir",
            run,
            "--quiet",
            "--device",
            "cpu",
            "--sample-every",
            "0",
        ]
    )
    assert r.code == 0, r.err
    p["run"] = str(run)
    ckpt = next((run / "checkpoints").glob("step-*"))

    def broken_run(name, change):
        dst = root / name
        shutil.copytree(run, dst)
        change(next((dst / "checkpoints").glob("step-*")), dst)
        p[name] = str(dst)

    def tamper(**fields):
        def change(ck, _):
            state = torch.load(ck / "state.pt", weights_only=True)
            state.update(fields)
            torch.save(state, ck / "state.pt")

        return change

    broken_run("run_garbage", lambda ck, _: (ck / "state.pt").write_bytes(b"garbage"))
    broken_run("run_statelist", lambda ck, _: torch.save([1, 2, 3], ck / "state.pt"))
    broken_run("run_strstep", tamper(step="ten"))
    broken_run("run_negstep", tamper(step=-5))
    broken_run("run_noopt", tamper(optimizers={}))
    broken_run("run_optlist", tamper(optimizers=[1]))
    broken_run("run_otherdata", tamper(data_source="synthetic:999"))
    broken_run("run_othertask", tamper(task="dvae"))
    broken_run("run_escape", lambda _, dst: (dst / "checkpoints" / "latest").write_text("../../../etc\n"))
    broken_run("run_floatstep", tamper(step=1.5))
    broken_run("run_badweights", lambda ck, _: [f.write_bytes(b"junk") for f in ck.glob("*.safetensors")])
    p["ckpt"] = str(ckpt)

    # images and arrays
    imgs = root / "images"
    imgs.mkdir()
    (imgs / "broken.png").write_bytes(b"not a png at all")
    p["badimages"] = str(imgs)
    loop = root / "loop"
    (loop / "cls").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(loop / "cls" / "a.png")
    os.symlink(loop, loop / "cls" / "again")
    p["loopimages"] = str(loop)
    np.save(root / "arr.npy", np.zeros((4, 32, 32, 3), np.uint8))
    os.replace(root / "arr.npy", root / "renamed.npz")
    p["renamed_npz"] = str(root / "renamed.npz")
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    p["garbage_npz"] = str(root / "garbage.npz")
    np.savez(root / "nokey.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    p["nokey_npz"] = str(root / "nokey.npz")
    np.savez(root / "floats.npz", arr_0=np.full((4, 32, 32, 3), np.nan, np.float32))
    p["float_npz"] = str(root / "floats.npz")
    np.savez(root / "flat.npz", arr_0=np.zeros((4, 32), np.uint8))
    p["flat_npz"] = str(root / "flat.npz")
    np.savez(root / "good.npz", arr_0=np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    p["good_npz"] = str(root / "good.npz")
    (root / "stats.safetensors").write_bytes(b"\x00" * 40)
    p["bad_stats"] = str(root / "stats.safetensors")
    (root / "weights.pth").write_bytes(b"\x80\x04not a torch file")
    p["bad_weights"] = str(root / "weights.pth")
    # a folder with files of ours missing the marker: a user's folder
    user = root / "userdir"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    (user / "samples").mkdir()
    (user / "samples" / "mine.txt").write_text("do not delete")
    p["userdir"] = str(user)
    return p


@pytest.fixture
def paths(bad_files, tmp_path):
    """The prepared files plus a fresh {tmp} folder for this probe."""
    return {**bad_files, "tmp": str(tmp_path)}


@pytest.fixture
def run_probe(paths, record_property):
    """Run one probe's command line and check it."""
    torch.set_num_threads(2)

    def go(command, expect=""):
        line = check(run_main(expand(command, paths)), expect)
        record_property("error", line)
        return line

    return go


def pytest_runtest_logreport(report):
    """With D2IT_SHOW_PROBES=1, print each probe's error line (reviewing the sentences)."""
    if os.environ.get("D2IT_SHOW_PROBES") and report.when == "call" and report.passed:
        for name, text in report.user_properties:
            if name == "error":
                print(f"\n{report.nodeid.split('[')[-1][:-1]}: {text}", file=sys.__stderr__)
