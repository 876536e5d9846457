"""`d2it.System.from_pretrained` / `save_pretrained` and `hf://` resolution in core, against a local Hub cache.

Nothing touches the network: the Hub's cache is a temporary folder laid out as huggingface_hub lays
it out (`HF_HUB_CACHE`), and the Hub is offline.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import d2it
from d2it import hub
from d2it import system as systems
from d2it.errors import CheckpointError, ConfigError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def record(**kw):
    base = dict(backbone="tiny", sampler=None, schedule=None, image_size=32, num_classes=3)
    base.update(kw)
    return systems.SystemRecord(**base)


def saved(folder):
    torch.manual_seed(0)
    system = systems.build(record(options={"backbone": {"width": 4}}))
    with torch.no_grad():
        for p in system.parameters():
            p.add_(torch.randn(p.shape) * 0.1)  # weights that differ from a fresh build
    return system.save_pretrained(folder, extra={"note": "saved"}), system


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline (HF_HUB_OFFLINE): only what a test puts there resolves."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("D2IT_OFFLINE", raising=False)
    return cache


def cache_repo(cache, repo_id: str, files_from, commit: str = COMMIT, ref: str = "main"):
    """Lay a folder out as the Hub's cache does: models--OWNER--NAME/{refs/REF, snapshots/COMMIT/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit, dirs_exist_ok=True)
    return repo / "snapshots" / commit


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_system_is_offered_by_d2it_without_importing_it_first():
    assert d2it.System is systems.System and "System" in d2it.__all__


def test_save_pretrained_and_from_pretrained_round_trip(tiny_registry, tmp_path):
    folder, system = saved(tmp_path / "m")
    assert folder == tmp_path / "m" and (folder / "d2it.json").is_file()
    back = d2it.System.from_pretrained(folder)
    assert back.record == system.record.canonical()
    assert_same_weights(back, system)
    assert systems.read_record(folder)[1]["extra"] == {"note": "saved"}
    assert (
        d2it.System.from_pretrained(str(folder), torch_dtype=torch.float64).content.proj.weight.dtype == torch.float64
    )
    with pytest.raises(CheckpointError, match="does not exist"):
        d2it.System.from_pretrained(tmp_path / "nowhere")


def test_hf_systems_resolve_from_the_cache_offline(tiny_registry, tmp_path, offline_cache):
    folder, system = saved(tmp_path / "m")
    snapshot = cache_repo(offline_cache, "me/tiny", folder)
    cache_repo(offline_cache, "me/tiny", folder, commit="f" * 40, ref="v1")  # a tag pointing at another commit
    assert hub.resolve_system("hf://me/tiny") == snapshot
    assert hub.resolve_system("hf://me/tiny@v1") == offline_cache / "models--me--tiny" / "snapshots" / ("f" * 40)
    assert_same_weights(d2it.System.from_pretrained("hf://me/tiny"), system)
    assert_same_weights(d2it.System.from_pretrained(f"hf://me/tiny@{COMMIT}"), system)


def test_hub_errors_are_user_errors_with_the_clis_messages(tiny_registry, tmp_path, offline_cache, monkeypatch):
    with pytest.raises(CheckpointError, match=r"someone/missing is not in the Hugging Face cache.*offline.*HF_HUB_OFF"):
        d2it.System.from_pretrained("hf://someone/missing")
    with pytest.raises(ConfigError, match="hf://OWNER/NAME"):
        d2it.System.from_pretrained("hf://not-a-repo-id")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    cache_repo(offline_cache, "me/not-a-system", tmp_path / "other")  # a repository without d2it.json
    with pytest.raises(CheckpointError, match="me/not-a-system is not a d2it system"):
        d2it.System.from_pretrained("hf://me/not-a-system")


def test_d2it_offline_keeps_the_hub_offline_too(tiny_registry, tmp_path, monkeypatch):
    """D2IT_OFFLINE=1 alone (HF_HUB_OFFLINE unset): cached repositories resolve, others fail without a connection."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("D2IT_OFFLINE", "1")
    folder, system = saved(tmp_path / "m")
    cache_repo(cache, "me/tiny", folder)
    assert_same_weights(d2it.System.from_pretrained("hf://me/tiny"), system)
    with pytest.raises(CheckpointError, match="offline.*unset D2IT_OFFLINE"):
        d2it.System.from_pretrained("hf://me/elsewhere")


def test_without_huggingface_hub_a_hub_system_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if it were not installed
    with pytest.raises(CheckpointError, match=r"d2it-core\[hub\]"):
        d2it.System.from_pretrained("hf://me/tiny")
    assert hub.resolve_system(tmp_path) == tmp_path  # local folders need no huggingface_hub


def test_a_fresh_interpreter_reads_hf_systems_from_HF_HUB_CACHE(tmp_path):
    """As a user runs it: HF_HUB_CACHE and HF_HUB_OFFLINE in the environment, nothing patched."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    code = (
        "import d2it, torch, sys\n"
        "from d2it import system as systems\n"
        "rec = systems.SystemRecord(backbone='dit-s', vae=None, image_size=16, num_classes=2,\n"
        "    options={'backbone': {'depth': 1, 'hidden_size': 32, 'num_heads': 2}})\n"
        "torch.manual_seed(0)\n"
        "systems.build(rec).save_pretrained(sys.argv[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "D2IT_"))}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sys")], check=True, env=env, timeout=300)
    cache_repo(cache, "me/dit", tmp_path / "sys")
    load = "import d2it; s = d2it.System.from_pretrained('hf://me/dit'); print(s.record.backbone, s.record.num_classes)"
    env = {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["dit-s", "2"]
    missing = "import d2it; d2it.System.from_pretrained('hf://me/other')"
    out = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "me/other is not in the Hugging Face cache" in out.stderr
