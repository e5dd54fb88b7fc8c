"""The GPU check script (ops/gpu_check.py) runs on a lent GPU machine with minutes to spare, so a
bug found there costs the only GPU time a task gets. Its --cpu-smoke mode runs every phase small
on the CPU; this test runs it and checks the figures it derives, so the script is tested here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 2


def expected_parameters(hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int) -> int:
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden  # MLP, two RMSNorms
    return 2 * vocab * hidden + LAYERS * per_layer + hidden  # untied embedding and LM head, final norm


@pytest.mark.e2e
def test_cpu_smoke_reports_sane_figures() -> None:
    done = subprocess.run(
        [sys.executable, "ops/gpu_check.py", "--cpu-smoke", "--skip-pytest", "--layers", str(LAYERS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    engine = summary["engine"]
    # The smoke model: ops/gpu_check.py's Llama with hidden 256, intermediate 704, 4 heads, 2 kv heads.
    # Counted from the checkpoint: on CPU the engine packs bf16 linear weights and the modules'
    # own weights are empty, which once made this 8.2M and the prefill TFLOP/s negative.
    assert engine["parameters"] == expected_parameters(256, 704, 4, 2, 32000)
    assert engine["prefill"]["tflops"] > 0
    assert engine["prefill"]["tokens_per_s"] > 0
    assert set(engine["decode"]) == {"1", "2", "8"}
    for row in engine["decode"].values():
        assert row["step_ms"] > 0 and row["gb_per_step"] > 0
    transfer = summary["kv_transfer_gb_s"]
    assert transfer["1 MiB"] > 0 and transfer["4 MiB"] > 0
    assert "transports" in transfer["transport"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer; this machine has CUDA")
def test_no_cuda_exits_2_and_says_so() -> None:
    done = subprocess.run(["bash", "ops/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
