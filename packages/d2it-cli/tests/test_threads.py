"""`d2it` makes torch's threads passive on a busy machine before torch loads, unless the user chose otherwise."""

import json
import os
import subprocess
import sys
import time

import pytest

from d2it_cli import threads

# runs `d2it ARGV` in a fresh interpreter, the machine measured as BUSY cores, and prints the OMP_WAIT_POLICY
# torch saw when it was first imported
PROBE = """
import json, os, sys
seen = {}

class FirstTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
        return None

sys.meta_path.insert(0, FirstTorchImport())
from d2it_cli import threads
from d2it_cli.main import main
assert "torch" not in sys.modules, "importing d2it_cli.main imported torch"
threads.others_cores = lambda window=threads.WINDOW: float(os.environ["BUSY"])
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(seen), file=sys.stderr)
"""


def torch_saw(user: dict, busy: float) -> dict:
    """What torch's import saw in `d2it sample --help` (whose module imports torch) started with `user`'s settings."""
    env = {k: v for k, v in os.environ.items() if k not in threads.USER_CHOICES}
    proc = subprocess.run([sys.executable, "-c", PROBE, "sample", "--help"], env={**env, **user, "BUSY": str(busy)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--cfg-scale" in proc.stdout
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(("user", "expected"), [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_d2it_sets_the_wait_policy_before_torch_loads(user, expected):
    assert torch_saw(user, busy=2.0) == {"OMP_WAIT_POLICY": expected}


def test_configure_makes_threads_passive_on_a_busy_machine_only():
    environ = {"PATH": "/bin"}
    assert threads.configure(environ, modules={}, busy=threads.BUSY_CORES - 0.1) == {}
    assert environ == {"PATH": "/bin"}  # an idle machine keeps torch's default
    assert threads.configure(environ, modules={}, busy=threads.BUSY_CORES) == threads.PASSIVE
    assert environ == {"PATH": "/bin", **threads.PASSIVE}


@pytest.mark.parametrize("choice", threads.USER_CHOICES)
def test_configure_leaves_a_users_choice_alone(choice):
    environ = {choice: "1"}
    assert threads.configure(environ, modules={}, busy=2.0) == {}
    assert environ == {choice: "1"}


def test_configure_changes_nothing_once_torch_is_loaded():
    environ = {}
    assert threads.configure(environ, modules={"torch": sys.modules["torch"]}, busy=2.0) == {}
    assert environ == {}


@pytest.mark.skipif(threads.busy_cpu_seconds() is None, reason="needs /proc/stat")
def test_others_cores_sees_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert threads.others_cores(window=0.3) >= threads.BUSY_CORES
    finally:
        busy.kill()
        busy.wait()
