"""`d2it import` / `d2it push` from the command line and `hf://` systems, against a local stand-in for the Hub.

Nothing touches the network: the Hub's cache is a temporary folder (`HF_HUB_CACHE`, offline mode)
and the upload API is replaced by one that writes the commit into a folder.
"""

import json
import shutil

import numpy as np
import pytest
import torch

import d2it
from d2it import system as systems
from d2it_cli.interop import hub

huggingface_hub = pytest.importorskip("huggingface_hub")
constants = pytest.importorskip("huggingface_hub.constants")

TINY_DIT = {"depth": 1, "hidden_size": 32, "num_heads": 2}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline: only what a test puts there can be resolved."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache, repo_id: str, files_from, commit: str = COMMIT, ref: str = "main"):
    """Lay a folder out as the Hub's cache does: models--OWNER--NAME/{refs/REF, snapshots/COMMIT/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit, dirs_exist_ok=True)
    return repo / "snapshots" / commit


def tiny_system(tmp_path, name="sys", image_size=16):
    record = systems.SystemRecord(
        backbone="dit-s", vae=None, image_size=image_size, num_classes=4,
        options={"backbone": TINY_DIT, "sampler": {"steps": 2}},
    )  # fmt: skip
    torch.manual_seed(0)
    system = systems.build(record)
    systems.save(system, tmp_path / name)
    return tmp_path / name


def test_hf_system_resolves_from_the_cache_and_samples(tmp_path, offline_cache, run_cli):
    snapshot = cache_repo(offline_cache, "me/tiny-dit", tiny_system(tmp_path))
    assert hub.resolve_system("hf://me/tiny-dit") == snapshot
    assert hub.resolve_system(f"hf://me/tiny-dit@{COMMIT}") == snapshot
    result = run_cli("build", "--from", "hf://me/tiny-dit", "--json", "--no-count", "--out", tmp_path / "copy")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["system"]["backbone"] == "dit-s"
    assert (tmp_path / "copy" / "content.safetensors").is_file()


def test_offline_without_a_cached_copy_exits_2_naming_the_repo(tmp_path, offline_cache, run_cli):
    result = run_cli("build", "--from", "hf://someone/missing-system", "--no-count")
    assert result.exit_code == 2
    assert "someone/missing-system" in result.output and "offline" in result.output
    out = tmp_path / "o"
    result = run_cli("import", "dit", "--checkpoint", tmp_path / "x.pt", "--vae", "sd-vae-ft-mse", "--out", out)
    assert result.exit_code == 2 and "stabilityai/sd-vae-ft-mse" in result.output


def test_writing_commands_refuse_hub_systems(run_cli, offline_cache):
    result = run_cli("thresholds", "--system", "hf://me/tiny-dit", "--data", "synthetic:4")
    assert result.exit_code == 2 and "d2it build --from hf://me/tiny-dit --out DIR" in result.output


def test_bad_hub_ids_are_user_errors(run_cli, offline_cache):
    result = run_cli("build", "--from", "hf://not-a-repo-id", "--no-count")
    assert result.exit_code == 2 and "hf://OWNER/NAME" in result.output


def test_push_uploads_one_commit_with_a_model_card_and_round_trips(tmp_path, offline_cache, monkeypatch, run_cli):
    folder = tiny_system(tmp_path)
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").write_text(json.dumps({"metrics": {"fid": 12.5, "isc": 3.0}}))
    (folder / "runs" / "content").mkdir(parents=True)
    (folder / "runs" / "content" / "train.json").write_text(json.dumps({"batch": 256, "lr": 1e-4}))
    (folder / "runs" / "content" / "big.ckpt").write_bytes(b"not uploaded")
    remote = tmp_path / "remote"
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kwargs):
        calls["repo"] = (repo_id, private, exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message=None, revision=None, repo_type=None, **kwargs):
        calls["commit"] = commit_message
        for op in operations:
            target = remote / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            data = op.path_or_fileobj
            target.write_bytes(data if isinstance(data, bytes) else open(data, "rb").read())

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    result = run_cli("push", folder, "me/pushed", "--private")
    assert result.exit_code == 0, result.output
    assert calls["repo"] == ("me/pushed", True, True) and "hf://me/pushed" in result.output
    uploaded = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    assert uploaded == ["README.md", "content.safetensors", "d2it.json", "eval/metrics.json"]
    card = (remote / "README.md").read_text()
    assert "library_name: d2it" in card and "| backbone | `dit-s` | d2it-transformers" in card
    assert "| fid | 12.5 |" in card and '"batch": 256' in card
    for dist in systems.package_versions():
        assert dist in card
    # what was pushed, fetched back through the cache, is the same system
    cache_repo(offline_cache, "me/pushed", remote)
    pulled = systems.load(hub.resolve_system("hf://me/pushed"))
    original = systems.load(folder)
    for key, value in original.content.state_dict().items():
        assert torch.equal(pulled.content.state_dict()[key], value)


def test_push_dry_run_and_bad_folder(tmp_path, run_cli):
    folder = tiny_system(tmp_path)
    result = run_cli("push", folder, "me/x", "--dry-run")
    assert result.exit_code == 0 and "README.md" in result.output and "d2it.json" in result.output
    result = run_cli("push", tmp_path / "nothing", "me/x")
    assert result.exit_code == 2 and "does not exist" in result.output


# -- import from the command line --------------------------------------------------------------------
def test_import_commands(tmp_path, run_cli):
    state_model = d2it.create(
        "backbone", "dit-s", TINY_DIT, input_size=4, in_channels=4, num_classes=10, grains=None, attention=None
    )
    torch.save(state_model.state_dict(), tmp_path / "dit.pt")
    result = run_cli("import", "dit", "--checkpoint", tmp_path / "dit.pt", "--num-heads", 2,
                     "--out", tmp_path / "imported", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["image_size"], summary["num_classes"], summary["guidance"]) == (32, 10, "dit")
    result = run_cli("sample", "--system", tmp_path / "imported", "--num", 2, "--steps", 2, "--cfg-scale", 1.5,
                     "--out", tmp_path / "samples", "--quiet")  # fmt: skip
    assert result.exit_code == 2 and "has no VAE" in result.output and "import sd-vae" in result.output
    result = run_cli("eval", "sample-and-score", "--system", tmp_path / "imported", "--num", 2,
                     "--ref", tmp_path / "nothing.npz", "--out", tmp_path / "ev")  # fmt: skip
    assert result.exit_code == 2 and "has no VAE" in result.output
    # the VAE goes into the same directory (a diffusers folder); then the system makes images
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        block_out_channels=(32,) * 4, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, scaling_factor=0.13025,
    ).save_pretrained(tmp_path / "vae")  # fmt: skip
    result = run_cli("import", "sd-vae", tmp_path / "vae", "--out", tmp_path / "imported", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["latent_scale"] == pytest.approx(0.13025)
    record, doc = systems.read_record(tmp_path / "imported")
    assert record.vae == "vae-f8" and record.options["guidance"] == {"channels": "dit"}
    assert doc["extra"]["imported"]["from"] == "dit" and doc["extra"]["imported_vae"]["source"] == "vae"
    result = run_cli("sample", "--system", tmp_path / "imported", "--num", 2, "--steps", 2, "--cfg-scale", 1.5,
                     "--out", tmp_path / "samples", "--quiet", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num"] == 2
    manifest = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert manifest["guidance_channels"] == "dit" and manifest["cfg_scale"] == 1.5
    result = run_cli("import", "dit", "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run_cli("import", "sd-vae", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "nowhere" in result.output


def test_build_sets_latent_scale_and_guidance_channels(tmp_path, run_cli):
    result = run_cli(
        "build", "--vae", "vae-f8", "--backbone", "dit-s", "--image-size", 16, "--no-count", "--out", tmp_path / "s",
        "--set", "vae.base_width=32", "--set", "vae.channel_mult=1,2", "--set", "vae.decoder_mult=1,2",
        "--set", "backbone.depth=1", "--set", "backbone.hidden_size=32", "--set", "backbone.num_heads=2",
        "--set", "system.latent_scale=0.18215", "--set", "guidance.channels=dit",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record, _ = systems.read_record(tmp_path / "s")
    assert record.latent_scale == pytest.approx(0.18215) and record.options["guidance"] == {"channels": "dit"}
    assert record.options["vae"]["quant_conv"] is True
    bad = run_cli("build", "--backbone", "dit-s", "--no-count", "--set", "guidance.channels=four")
    assert bad.exit_code == 2 and "all, dit" in bad.output


# -- pushing a diffusers export ----------------------------------------------------------------------
def fake_hub(monkeypatch, remote):
    """HfApi's create_repo / create_commit replaced by writes into the folder `remote`; returns the calls."""
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kwargs):
        calls["repo"] = (repo_id, private, exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message=None, revision=None, repo_type=None, **kwargs):
        calls["commit"] = commit_message
        for op in operations:
            target = remote / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            data = op.path_or_fileobj
            target.write_bytes(data if isinstance(data, bytes) else open(data, "rb").read())

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return calls


def test_push_a_d2it_diffusers_export_and_load_it_back_from_the_cache(
    tiny_system, tmp_path, offline_cache, monkeypatch, run_cli
):
    diffusers = pytest.importorskip("diffusers")
    modules = pytest.importorskip("diffusers.utils.dynamic_modules_utils")
    monkeypatch.setattr(modules, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    export = tmp_path / "export"
    result = run_cli("export", "--format", "diffusers", "--system", tiny_system, "--out", export)
    assert result.exit_code == 0, result.output
    remote = tmp_path / "remote"
    calls = fake_hub(monkeypatch, remote)
    result = run_cli("push", export, "me/tiny-d2it-diffusers")
    assert result.exit_code == 0, result.output
    assert "trust_remote_code=True" in result.output and calls["commit"] == "Upload diffusers export export"
    uploaded = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    assert uploaded == [
        "README.md", "d2it_export.json", "model_index.json", "pipeline_d2it.py", "system/content.safetensors",
        "system/d2it.json", "system/d2it_system.py", "system/grain.safetensors", "system/vae.safetensors",
    ]  # fmt: skip
    card = (remote / "README.md").read_text()
    assert "library_name: diffusers" in card and "trust_remote_code=True" in card and "| grain | `dgt-s`" in card
    assert "d2it sample" in card and "d2it-cli" in card
    # what was pushed, fetched back through the Hub's cache, is the same pipeline
    cache_repo(offline_cache, "me/tiny-d2it-diffusers", remote)
    pulled = diffusers.DiffusionPipeline.from_pretrained(
        "me/tiny-d2it-diffusers", trust_remote_code=True, local_files_only=True, cache_dir=str(offline_cache)
    )
    local = diffusers.DiffusionPipeline.from_pretrained(export, trust_remote_code=True)
    a = pulled([1, 2], num_inference_steps=2, seed=3, output_type="np").images
    assert np.array_equal(a, local([1, 2], num_inference_steps=2, seed=3, output_type="np").images)


def test_push_dry_run_of_a_dit_diffusers_export_writes_its_card(tmp_path, run_cli):
    from test_diffusers_export import dit_system

    dit_system(tmp_path / "sys")
    result = run_cli("export", "--format", "diffusers", "--system", tmp_path / "sys", "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    result = run_cli("push", tmp_path / "export", "me/tiny-dit", "--dry-run")
    assert result.exit_code == 0 and "transformer/diffusion_pytorch_model.safetensors" in result.output
    card = hub.diffusers_card(tmp_path / "export", "me/tiny-dit")
    assert "DiTPipeline" in card and 'from_pretrained("me/tiny-dit")' in card and "downscale_freq_shift" in card
    assert "trust_remote_code" not in card
