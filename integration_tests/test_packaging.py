"""The five distributions: lockstep versions, exact sibling pins, entry points, and import independence."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
DISTS = {"d2it-core": "d2it", "d2it-vae": "d2it_vae", "d2it-transformers": "d2it_transformers",
         "d2it-sampling": "d2it_sampling", "d2it-cli": "d2it_cli"}  # fmt: skip
MIDDLE = ["d2it_vae", "d2it_transformers", "d2it_sampling"]


def project(dist):
    return tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text())["project"]


def test_versions_are_in_lockstep_and_siblings_pinned_exactly():
    versions = {dist: project(dist)["version"] for dist in DISTS}
    assert len(set(versions.values())) == 1, versions
    version = versions["d2it-core"]
    for dist in DISTS:
        for req in project(dist)["dependencies"]:
            name = req.split("==")[0].split(">")[0].split("<")[0].strip()
            if name in DISTS:
                assert req == f"{name}=={version}", (dist, req)
    assert {r.split("==")[0] for r in project("d2it-cli")["dependencies"] if r.startswith("d2it-")} == set(DISTS) - {
        "d2it-cli"
    }


@pytest.mark.parametrize("dist", list(DISTS))
def test_installed_distribution_registers_through_its_entry_point(dist):
    assert metadata.version(dist) == project(dist)["version"]
    eps = [ep for ep in metadata.distribution(dist).entry_points if ep.group == "d2it"]
    assert [ep.value for ep in eps] == [f"{DISTS[dist]}.plugin"]
    # nox installs our packages from their folders, not in editable mode: tests see what users get
    direct_url = metadata.distribution(dist).read_text("direct_url.json") or ""
    assert '"editable":true' not in direct_url.replace(" ", "")


@pytest.mark.parametrize("module", ["d2it", *MIDDLE])
def test_middle_packages_never_import_each_other(module):
    others = [m for m in ["d2it_cli", *MIDDLE] if m != module]
    code = (
        f"import importlib, pkgutil, sys, {module}\n"
        f"for info in pkgutil.walk_packages({module}.__path__, '{module}.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(','.join(m for m in {others!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing every module of {module} imported {out}"
