#!/usr/bin/env bash
# Lint, type-check and run the test suite in .venv (run ops/setup.sh first).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== ruff"; ruff check .
echo "== mypy"; mypy shared kernels services
echo "== pytest"; python -m pytest -q "$@"
