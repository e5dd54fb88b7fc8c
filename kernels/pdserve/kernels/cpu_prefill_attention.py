"""Causal prefill attention on bfloat16 CPU caches through the C kernel in cpu_prefill_attention.c.

The kernel runs both attention products on AVX-512 BF16 dot products and skips the key tiles the causal
mask hides, where the reference gathers each sequence's blocks and calls torch's flash kernel per
sequence (ops/bench_kernels.py compares the two). It needs a CPU and compiler with AVX-512 BF16 and
head_dim a multiple of 16; `supports` and `available` say whether a call can run here, and everything
else keeps the reference.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from pdserve.kernels.native_build import load_bound
from pdserve.kernels.native_paged import check_cache_and_tables, check_int32_vector, raise_for
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_prefill_attention.c")
# head_dim is a multiple of one 16-float vector, up to MAX_HEAD_DIM (bounds of the C kernel).
DIM_MULTIPLE = 16
MAX_HEAD_DIM = 256
# The C kernel's ERR_* return codes.
ERRORS = {
    1: "out of memory for the per-thread key buffers",
    2: "a context length is shorter than its chunk or beyond its block table",
    3: "a block table entry is not a block of the cache",
    6: "a shape the kernel cannot take (num_heads % num_kv_heads, head_dim, sizes < 1)",
    7: "this build has no AVX-512 BF16",
    8: "cu_seqlens_q does not start at 0 or decreases",
}

# pdserve_paged_prefill's C signature: seven pointers, ten int64 sizes and strides, scale, threads.
_ARGTYPES: list[type] = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 10 + [ctypes.c_float, ctypes.c_int]


def supports(query: Tensor, k_cache: Tensor) -> bool:
    """Whether the C kernel handles these tensors: bfloat16 on the CPU, head_dim a multiple of 16 up to 256."""
    head_dim = query.shape[-1]
    return (
        query.device.type == "cpu"
        and k_cache.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and k_cache.dtype == torch.bfloat16
        and head_dim % DIM_MULTIPLE == 0
        and 0 < head_dim <= MAX_HEAD_DIM
    )


def available() -> bool:
    """Whether the library is built and this CPU has AVX-512 BF16; the first call builds it (a second or two)."""
    library = _library()
    return library is not None and bool(library.pdserve_prefill_supported())


@functools.cache
def _library() -> ctypes.CDLL | None:
    return load_bound(
        SOURCE, {"pdserve_paged_prefill": _ARGTYPES, "pdserve_prefill_supported": []}, "torch's flash attention"
    )


def paged_attention_prefill(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_seqlens_q: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """As reference.paged_attention_prefill: packed chunks query [T, H, D] -> new [T, H, D].

    Needs `supports(query, k_cache)` and `available()`. Raises ValueError for bad metadata (a context
    shorter than its chunk, a block id outside the cache) before the kernel reads any K or V.
    """
    library = _library()
    assert library is not None, "the native kernel is not available"
    tokens, num_heads, head_dim = query.shape
    num_blocks, block_size, num_kv_heads = k_cache.shape[:3]
    batch = context_lens.shape[0]
    assert supports(query, k_cache), "dtype, device or sizes the C kernel does not handle"
    check_cache_and_tables(query, k_cache, v_cache, block_tables, batch)
    check_int32_vector("cu_seqlens_q", cu_seqlens_q, batch + 1)
    check_int32_vector("context_lens", context_lens, batch)
    assert int(cu_seqlens_q[-1]) == tokens, "cu_seqlens_q must end at the number of query tokens"
    out = torch.empty(tokens, num_heads, head_dim, dtype=query.dtype)
    if batch == 0 or tokens == 0:
        return out
    err = library.pdserve_paged_prefill(
        out.data_ptr(),
        query.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        cu_seqlens_q.data_ptr(),
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
        torch.get_num_threads(),
    )
    raise_for(err, ERRORS, "paged_attention_prefill")
    return out
