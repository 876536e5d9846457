#!/usr/bin/env bash
# One-go GPU check (< 8 minutes on one H100/H200): attention backends, then bf16 training and sampling speed of
# DiT-XL/2 and D²iT-XL (dense and sparse RefineNet), eager "before" and compiled "after" in the same run, one table.
# Results: JSON and profiles under $OUT (default ./gpu-results). Pass --dry-run for tiny CPU sizes, --budget SECONDS.
# Without installed d2it packages (a bare GPU machine) the sources are put on PYTHONPATH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON_SET:-}" ] && ! "$PYTHON" -c "import d2it" 2>/dev/null; then
  PYTHON="$ROOT/.venv/bin/python"
fi
if ! "$PYTHON" -c "import d2it, d2it_transformers, d2it_sampling, d2it_cli" 2>/dev/null; then
  for pkg in d2it-core d2it-transformers d2it-sampling d2it-vae d2it-cli; do
    PYTHONPATH="$ROOT/packages/$pkg/src${PYTHONPATH:+:$PYTHONPATH}"
  done
  export PYTHONPATH
fi
export PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 480 "$PYTHON" "$HERE/gpu_check.py" "$@"
