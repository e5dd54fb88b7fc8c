#!/usr/bin/env bash
# Creates .venv and installs pdserve with its test tools. Safe to re-run.
# torch is pinned first: on our machines torch==2.13.0 is the CPU build on local disk, while an
# unpinned torch would pull a multi-GB CUDA build. On a GPU machine install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  python -m pip install -q torch==2.13.0
fi
echo "setup: installing pdserve and its test extras"
python -m pip install -q -e '.[test]'
echo "setup: done ($(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
