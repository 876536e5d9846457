#!/usr/bin/env bash
# GPU parity (< 3 minutes on one H100/H200): an imported DiT-XL/2 system (random weights) against diffusers'
# DiTPipeline + DDPMScheduler in fp32 and bf16; max |difference| per dtype as a table and a JSON line
# ($OUT/gpu_parity.json when OUT is set). Needs torch and diffusers, not lpips or torch-fidelity.
# Without installed d2it packages (a bare GPU machine) the sources are put on PYTHONPATH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import d2it, d2it_transformers, d2it_sampling, d2it_vae, d2it_cli" 2>/dev/null; then
  for pkg in d2it-core d2it-vae d2it-transformers d2it-sampling d2it-cli; do
    PYTHONPATH="$ROOT/packages/$pkg/src${PYTHONPATH:+:$PYTHONPATH}"
  done
  export PYTHONPATH
fi
export PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"
exec timeout 400 "$PYTHON" "$HERE/gpu_parity.py" "$@"
