"""Compares each Triton kernel with the torch reference; run as a script, prints one JSON object.

    TRITON_INTERPRET=1 python tests/kernels/triton_checks.py --device cpu
    python tests/kernels/triton_checks.py --device cuda

Output: {check name: max abs difference, or the error text}. The tests run this in a subprocess
because triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when its module is first
imported; in a shared pytest process an earlier import would have fixed the mode already, and
setting the variable there would turn every later CUDA test into an interpreted one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import partial

import pdserve.kernels as kernels
import torch
from paged_cases import make_case
from pdserve.kernels import reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_store_kv(device: str, dtype: torch.dtype) -> float:
    case = make_case([9], 4, 2, 24, dtype, device=device)
    # A fused QKV output viewed per head: both tokens and heads are strided.
    qkv = torch.randn(6, 3, 2, 24, device=device).to(dtype)
    key, value = qkv[:, 1], qkv[:, 2].transpose(0, 1).contiguous().transpose(0, 1)
    slots = torch.tensor([0, 5, 6, 11, 23, 2], device=device)
    expected_k, expected_v = case.k_cache.clone(), case.v_cache.clone()
    reference.store_kv(key, value, expected_k, expected_v, slots)
    kernels.store_kv(key, value, case.k_cache, case.v_cache, slots)
    return max(_diff(case.k_cache, expected_k), _diff(case.v_cache, expected_v))


def check_decode(device: str, dtype: torch.dtype, block_size: int, heads: int, kv_heads: int) -> float:
    head_dim = 24  # not a power of two, so the kernel's padding masks are exercised
    case = make_case([1, 7, 16, 21], block_size, kv_heads, head_dim, dtype, seed=block_size, device=device)
    query = torch.randn(heads, 4, head_dim, device=device).to(dtype).transpose(0, 1)
    scale = head_dim**-0.5
    out = kernels.paged_attention_decode(query, case.k_cache, case.v_cache, case.block_tables, case.context_lens, scale)
    assert out.shape == query.shape and out.dtype == dtype
    # fp32 oracle: the kernel accumulates in fp32 whatever the cache dtype.
    expected = reference.paged_attention_decode(
        query.float(), case.k_cache.float(), case.v_cache.float(), case.block_tables, case.context_lens, scale
    )
    return _diff(out, expected)


def check_gather_scatter(device: str, dtype: torch.dtype, num_tokens: int) -> float:
    case = make_case([num_tokens], 4, 2, 24, dtype, seed=num_tokens, device=device)
    num_blocks = -(-num_tokens // 4)
    # One spare id past what num_tokens needs: gather must ignore it.
    block_ids = torch.cat([case.block_tables[0, :num_blocks], case.block_tables.new_zeros(1)])
    kv = kernels.gather_kv_blocks(case.k_cache, case.v_cache, block_ids, num_tokens)
    assert kv.is_contiguous() and kv.shape == (2, num_tokens, 2, 24)
    gather_diff = _diff(kv, reference.gather_kv_blocks(case.k_cache, case.v_cache, block_ids, num_tokens))
    targets = torch.arange(num_blocks, device=device).flip(0) + 2
    got_k, got_v = case.k_cache.clone(), case.v_cache.clone()
    kernels.scatter_kv_blocks(kv, got_k, got_v, targets)
    reference.scatter_kv_blocks(kv, case.k_cache, case.v_cache, targets)
    return max(gather_diff, _diff(got_k, case.k_cache), _diff(got_v, case.v_cache))


def check_dispatch_reached_triton() -> float:
    """Run last: the checks above went through the public API, which must have loaded every kernel module."""
    names = ("triton_store", "triton_paged_attention", "triton_block_copy")
    missing = [name for name in names if f"pdserve.kernels.{name}" not in sys.modules]
    assert not missing, f"dispatch never loaded {missing}"
    return 0.0


def _diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def checks(device: str) -> dict[str, Callable[[], float]]:
    """Check name -> a callable returning the max abs difference from the reference."""
    found: dict[str, Callable[[], float]] = {}
    for name, dtype in DTYPES.items():
        found[f"store_kv-{name}"] = partial(check_store_kv, device, dtype)
        for num_tokens in (1, 8, 13):
            found[f"gather_scatter-{name}-{num_tokens}tok"] = partial(check_gather_scatter, device, dtype, num_tokens)
        for block_size in (4, 16):
            for heads, kv_heads in ((4, 4), (8, 2), (3, 1)):
                found[f"decode-{name}-bs{block_size}-h{heads}kv{kv_heads}"] = partial(
                    check_decode, device, dtype, block_size, heads, kv_heads
                )
    found["dispatch_reached_triton"] = check_dispatch_reached_triton
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    # Dispatch reads this per call: the public API then runs Triton even on CPU tensors.
    os.environ["PDSERVE_KERNELS"] = "triton"
    results: dict[str, float | str] = {}
    for name, run in checks(args.device).items():
        try:
            results[name] = run()
        except Exception:
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
