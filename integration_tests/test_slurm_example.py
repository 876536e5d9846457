"""examples/slurm/train_content.sbatch with stand-ins for srun, scontrol and torchrun on PATH.

The stand-in torchrun plays SLURM and the trainer: in a slice without a checkpoint it sends USR1 to
the batch shell (as `--signal=B:USR1@300` does), waits for the shell to forward it, then "checkpoints"
slowly and exits. The script must forward the signal, wait for the trainer, requeue the job, and on
the next slice resume.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "train_content.sbatch"

FAKES = {
    # srun's options are dropped and the command runs in its place, so a signal to srun reaches the launcher
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
exec "$@"
""",
    "scontrol": """#!/bin/bash
if [ "$1" = show ]; then echo node-a; echo node-b; exit 0; fi
echo "scontrol $*" >> "$FAKE_LOG"
""",
    "torchrun": """#!/bin/bash
echo "torchrun $*" >> "$FAKE_LOG"
if [ -e "$RUN_DIR/checkpoints/latest" ]; then exit 0; fi
got=0
trap 'got=1' USR1
kill -USR1 "$PPID"                        # SLURM: USR1 to the batch shell before the time limit
for _ in $(seq 100); do [ "$got" = 1 ] && break; sleep 0.1; done
[ "$got" = 1 ] || { echo "no USR1 forwarded" >> "$FAKE_LOG"; exit 9; }
echo "trainer got USR1" >> "$FAKE_LOG"
sleep 0.5                                  # the checkpoint takes a while: the shell must wait for it
mkdir -p "$RUN_DIR/checkpoints" && echo step-0000400 > "$RUN_DIR/checkpoints/latest"
exit "${FAKE_EXIT:-3}"
""",
}


@pytest.fixture
def slurm(tmp_path):
    """Run the batch script as a SLURM slice would (same job id each time); returns (run, log lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "SYSTEM": str(tmp_path / "system"),
        "CACHE": str(tmp_path / "cache"),
        "RUN_DIR": str(tmp_path / "run"),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
    }

    def run(**extra):
        log.write_text("")
        proc = subprocess.run(
            ["bash", str(SCRIPT)], env={**env, **extra}, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        return proc, log.read_text().splitlines()

    return run


def launch(lines) -> str:
    (line,) = [x for x in lines if x.startswith("torchrun ")]
    return line


def test_usr1_is_forwarded_the_job_requeued_and_the_next_slice_resumes(slurm, tmp_path):
    first, lines = slurm(SLURM_GPUS_ON_NODE="4")
    assert "trainer got USR1" in lines, (first.returncode, first.stdout, first.stderr)
    assert first.returncode == 3, first.stderr  # the trainer's own exit code, not the interrupted wait's
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()  # the shell waited for the checkpoint
    assert "scontrol requeue 4242" in lines
    args = launch(lines)
    assert "--resume" not in args and "--save-to-system" in args
    assert "--nproc_per_node 4 " in args and "--nnodes 2 " in args and "--rdzv_endpoint node-a:29500" in args

    second, lines = slurm(SLURM_GPUS_ON_NODE="4")
    assert second.returncode == 0, second.stderr
    assert launch(lines).endswith("--resume latest")
    assert not any(x.startswith("scontrol requeue") for x in lines)  # no signal: a finished run is not requeued


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"SLURM_GPUS_PER_NODE": "h100:2"}, "2"),
        ({"SLURM_GPUS_PER_NODE": "8"}, "8"),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, "3"),
        ({}, "1"),
    ],
)
def test_gpus_per_node_come_from_slurm(slurm, tmp_path, variables, expected):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000400\n")  # resume: no signal round trip
    proc, lines = slurm(**variables)
    assert proc.returncode == 0, proc.stderr
    assert f"--nproc_per_node {expected} " in launch(lines)


def test_the_log_is_appended_across_requeues_and_usr1_comes_before_the_limit():
    directives = dict(re.findall(r"^#SBATCH (--[\w-]+)(?:=(\S+))?", SCRIPT.read_text(), re.M))
    assert directives["--open-mode"] == "append"
    assert directives["--signal"].startswith("B:USR1@")
    assert "--requeue" in directives


def test_the_script_is_valid_bash():
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True).returncode == 0
