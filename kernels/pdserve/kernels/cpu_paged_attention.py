"""Paged decode attention on CPU tensors through the C kernel in cpu_paged_attention.c.

The kernel reads each sequence's K and V rows straight from their blocks, once per kv head, where the
torch reference first gathers them into a padded copy and then runs SDPA (ops/bench_kernels.py compares
the two). float32 and bfloat16 only; `supports` says whether a call can run here. The library is built
on first use (native_build.py); if that fails, one warning is logged and `available` stays False.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from pdserve.kernels.native_build import load_bound
from pdserve.kernels.native_paged import check_cache_and_tables, check_int32_vector, raise_for
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_paged_attention.c")
# Codes the C side knows the dtypes by.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
# Bounds of the C kernel's stack arrays (MAX_GROUP, MAX_CHUNKS * LANES there).
MAX_GROUP = 16
MAX_HEAD_DIM = 256
# The C kernel's ERR_* return codes.
ERRORS = {
    1: "out of memory for the per-thread score buffers",
    2: "a context length is < 1 or beyond its block table",
    3: "a block table entry is not a block of the cache",
    4: f"more than {MAX_GROUP} query heads per kv head",
    5: f"head_dim above {MAX_HEAD_DIM}",
    6: "a shape the kernel cannot take (num_heads % num_kv_heads, sizes < 1)",
}

# pdserve_paged_decode's C signature: six pointers, ten int64 sizes and strides, scale, dtype, threads.
_ARGTYPES: list[type] = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 10 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]


def supports(query: Tensor, k_cache: Tensor) -> bool:
    """Whether the C kernel handles these tensors: on the CPU, float32 or bfloat16 alike, sizes in bounds."""
    return (
        query.device.type == "cpu"
        and k_cache.device.type == "cpu"
        and query.dtype in DTYPE_CODES
        and k_cache.dtype == query.dtype
        and query.shape[1] // max(k_cache.shape[2], 1) <= MAX_GROUP
        and query.shape[2] <= MAX_HEAD_DIM
    )


def available() -> bool:
    """Whether the library is built and loaded; the first call builds it (about a second)."""
    return _library() is not None


@functools.cache
def _library() -> ctypes.CDLL | None:
    return load_bound(SOURCE, {"pdserve_paged_decode": _ARGTYPES}, "the torch reference")


def paged_attention_decode(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """query [B, H, D] attends to all context_lens[b] (int32, >= 1) tokens of its blocks -> new [B, H, D].

    Needs `supports(query, k_cache)` and `available()`. Raises ValueError for a context length out of
    [1, max_blocks * block_size] or a block id outside the cache, before the kernel reads any K or V.
    """
    library = _library()
    assert library is not None, "the native kernel is not available"
    batch, num_heads, head_dim = query.shape
    num_blocks, block_size, num_kv_heads = k_cache.shape[:3]
    assert supports(query, k_cache), "dtype, device or sizes the C kernel does not handle"
    check_cache_and_tables(query, k_cache, v_cache, block_tables, batch)
    check_int32_vector("context_lens", context_lens, batch)
    out = torch.empty(batch, num_heads, head_dim, dtype=query.dtype)
    if batch == 0:
        return out
    err = library.pdserve_paged_decode(
        out.data_ptr(),
        query.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        context_lens.data_ptr(),
        batch,
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        num_blocks,
        block_tables.shape[1],
        query.stride(0),
        query.stride(1),
        block_tables.stride(0),
        scale,
        DTYPE_CODES[query.dtype],
        torch.get_num_threads(),
    )
    raise_for(err, ERRORS, "paged_attention_decode")
    return out
