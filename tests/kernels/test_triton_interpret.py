"""Each Triton kernel equals the torch reference: on CPU under TRITON_INTERPRET=1, and on CUDA if present.

The comparisons run in a subprocess (tests/kernels/triton_checks.py); its docstring says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton_checks import checks

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

SCRIPT = Path(__file__).with_name("triton_checks.py")
CHECK_NAMES = list(checks("cpu"))
# Max abs difference allowed per dtype: copies are exact; decode rounds an fp32 result to the dtype
# (the interpreter truncates to bf16 instead of rounding, hence a full bf16 ulp at values up to 4).
TOLERANCES = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 2e-3}


def _run_checks(device: str, interpret: bool) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PDSERVE_KERNELS")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", device],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results: dict[str, float | str] = json.loads(proc.stdout.splitlines()[-1])
    return results


def _assert_matches(results: dict[str, float | str], name: str) -> None:
    result = results[name]
    assert isinstance(result, float), f"{name} raised:\n{result}"
    if name.startswith(("store_kv", "gather_scatter", "dispatch")):
        assert result == 0.0, f"{name}: copies must be exact, differ by {result}"
    else:
        tolerance = TOLERANCES[name.split("-")[1]]
        assert result <= tolerance, f"{name}: differs from the reference by {result} > {tolerance}"


@pytest.fixture(scope="module")
def interpreted() -> dict[str, float | str]:
    return _run_checks("cpu", interpret=True)


@pytest.fixture(scope="module")
def on_cuda() -> dict[str, float | str]:
    return _run_checks("cuda", interpret=False)


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_interpreted_kernel_matches_reference(interpreted: dict[str, float | str], name: str) -> None:
    _assert_matches(interpreted, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CHECK_NAMES)
def test_cuda_kernel_matches_reference(on_cuda: dict[str, float | str], name: str) -> None:
    _assert_matches(on_cuda, name)
