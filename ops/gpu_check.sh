#!/usr/bin/env bash
# GPU check (issue 5): prefill MFU, decode bandwidth use, Triton kernels and KV transfer over
# UCX on the CUDA card of this machine, in under 8 minutes. Details: ops/gpu_check.py.
#
#   ops/gpu_check.sh            # prints progress, then one JSON line with every figure
#
# Exit status: 0 measured, 2 no CUDA device here (nothing measured), 124 over the time bound,
# anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is false); nothing measured" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true
fi
export PDSERVE_CACHE_DIR=${PDSERVE_CACHE_DIR:-/tmp/pdcache}
# 7.5 minutes for everything: model 1-2, engine ~1, transfer ~1, Triton tests up to 2.5.
exec timeout --signal=TERM --kill-after=10 450 "$PYTHON" ops/gpu_check.py "$@"
