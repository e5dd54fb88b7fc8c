"""Sizing the KV pool: bytes given, or a share of the GPU's memory (vLLM's gpu_memory_utilization)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pdserve import LLM
from pdserve.engine.config import EngineConfig
from pdserve.engine.gpu_memory import ACTIVATION_SAFETY, activation_reserve, kv_pool_bytes
from pdserve.errors import InvalidRequestError

GIB = 1 << 30


def test_the_pool_gets_the_share_less_what_is_used_and_the_reserve() -> None:
    # An 80 GiB card, 16 GiB in use after the weights, a 2 GiB step: 0.9 leaves 72 - 16 - 2.
    assert kv_pool_bytes(0.9, 80 * GIB, 64 * GIB, 2 * GIB) == int(0.9 * 80 * GIB) - 18 * GIB
    with pytest.raises(InvalidRequestError, match="raise --gpu-memory-utilization or lower --max-num-batched"):
        kv_pool_bytes(0.2, 80 * GIB, 64 * GIB, 2 * GIB)


def test_the_reserve_grows_with_the_token_budget() -> None:
    # A Llama-8B-like shape in bf16: 2048 tokens x (4 x 4096 + 3 x 14336) x 2 bytes, plus
    # float32 logits of 256 rows of 128k, three times over.
    reserve = activation_reserve(2048, 256, 4096, 14336, 128256, 2)
    assert reserve == ACTIVATION_SAFETY * (2048 * (4 * 4096 + 3 * 14336) * 2 + 256 * 128256 * 4)
    assert activation_reserve(8192, 256, 4096, 14336, 128256, 2) > reserve


def test_bad_shares_are_refused() -> None:
    for share in (0, 1.5, -0.1, True, "0.9"):
        with pytest.raises(InvalidRequestError, match="gpu_memory_utilization"):
            EngineConfig(gpu_memory_utilization=share)  # type: ignore[arg-type]


def test_bytes_size_the_pool() -> None:
    llm = LLM(kv_cache_bytes=4 << 20)
    per_block = llm.engine.kv_layout.bytes_per_token * llm.engine.kv_layout.block_size
    assert llm.engine.kv_blocks_total == (4 << 20) // per_block


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_a_share_of_the_gpu_on_a_cpu_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match="on a CUDA device"):
        LLM(gpu_memory_utilization=0.9)
    done = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "generate", "--gpu-memory-utilization", "0.9", "Hello"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "--kv-cache-memory-bytes" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_share_of_the_gpu_sizes_the_pool() -> None:
    _, total = torch.cuda.mem_get_info()
    llm = LLM(device="cuda", gpu_memory_utilization=0.5)
    pool = llm.engine.kv_blocks_total * llm.engine.kv_layout.bytes_per_token * llm.engine.kv_layout.block_size
    assert 0 < pool <= 0.5 * total
    assert llm.generate(["Hello"])[0].token_ids
