#!/usr/bin/env bash
# One-go GPU check (< 8 minutes on one H100/H200): attention backends, bf16 training and sampling speed of
# D²iT-XL vs DiT-XL/2. Results: JSON under $OUT (default ./gpu-results). Pass --dry-run for tiny CPU sizes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
if [ -x "$HERE/../.venv/bin/python" ] && [ -z "${PYTHON_SET:-}" ] && ! "$PYTHON" -c "import d2it" 2>/dev/null; then
  PYTHON="$HERE/../.venv/bin/python"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 480 "$PYTHON" "$HERE/gpu_check.py" "$@"
