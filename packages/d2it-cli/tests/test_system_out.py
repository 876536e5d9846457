"""Where a system directory may be written: new, empty, or a system replaced with --overwrite; never a user's folder."""

import pytest
from PIL import Image

from d2it import system as systems
from d2it_cli.interop import import_dit
from d2it_cli.outputs import ForeignFolderError, system_target

BUILD = ["build", "--vae", "none", "--backbone", "dit-s", "--image-size", "32", "--num-classes", "4", "--no-count"]
BUILD += ["--set", "backbone.depth=2", "--set", "backbone.hidden_size=32", "--set", "backbone.num_heads=2"]


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    (path / "content.safetensors").write_text("not weights")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _contents(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_system_target_accepts_new_and_empty_folders_and_refuses_the_rest(tmp_path):
    assert system_target(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    system_target(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ForeignFolderError, match="is a file, not a folder"):
        system_target(tmp_path / "file")
    _user_folder(tmp_path / "user")
    for kwargs in ({}, {"overwrite": True}, {"update": True}):
        with pytest.raises(ForeignFolderError, match="holds no d2it system .*nothing was changed"):
            system_target(tmp_path / "user", **kwargs)


def test_build_never_writes_into_a_users_folder_and_replaces_a_system_only_when_told(tmp_path, run_cli):
    user = tmp_path / "photos"
    before = _user_folder(user)
    result = run_cli(*BUILD, "--out", user)
    assert result.exit_code == 2 and "holds no d2it system" in result.output
    assert _contents(user) == before
    out = tmp_path / "sys"
    assert run_cli(*BUILD, "--out", out).exit_code == 0
    weights = (out / "content.safetensors").read_bytes()
    again = run_cli(*BUILD, "--set", "backbone.depth=1", "--out", out)
    assert again.exit_code == 2 and "already holds a system; pass --overwrite" in again.output
    assert (out / "content.safetensors").read_bytes() == weights
    assert run_cli(*BUILD, "--set", "backbone.depth=1", "--out", out, "--overwrite").exit_code == 0
    assert systems.read_record(out)[0].options["backbone"]["depth"] == 1


def test_import_and_export_refuse_a_users_folder_before_reading_anything(tmp_path, run_cli):
    user = tmp_path / "photos"
    before = _user_folder(user)
    # the checkpoint does not exist: the folder check comes first, so the message is about the folder
    with pytest.raises(ForeignFolderError, match="holds no d2it system"):
        import_dit(tmp_path / "missing.pt", user)
    result = run_cli("import", "sd-vae", str(tmp_path / "missing-vae"), "--out", user)
    assert result.exit_code == 2
    assert _contents(user) == before


def test_pack_writes_only_into_a_new_or_its_own_folder(tmp_path, run_cli):
    images = tmp_path / "imgs" / "cat"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(images / f"{i}.png")
    user = tmp_path / "photos"
    before = _user_folder(user)
    refused = run_cli("pack", "--data", tmp_path / "imgs", "--out", user)
    assert refused.exit_code == 2 and "not empty and was not written by d2it" in refused.output
    assert _contents(user) == before
    for _ in range(2):  # a rerun replaces its own shards
        assert run_cli("pack", "--data", tmp_path / "imgs", "--out", tmp_path / "shards").exit_code == 0
    assert (tmp_path / "shards" / "train-000000.tar").is_file()
