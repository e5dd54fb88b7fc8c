"""Triton kernels copying one sequence's cache blocks to and from a dense [2, tokens, Hkv, D] tensor.

A cache block and the same block's share of the dense tensor are both contiguous runs of
block_size * Hkv * D elements, so each program is a masked memcpy of one chunk of one block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Elements per program: small enough to keep many programs in flight, large enough to amortize launch.
_CHUNK = 1024


@triton.jit
def _block_copy_kernel(
    k_cache_ptr,
    v_cache_ptr,
    dense_ptr,
    block_ids_ptr,
    num_elements,
    BLOCK_ELEMENTS: tl.constexpr,
    CHUNK: tl.constexpr,
    TO_CACHE: tl.constexpr,
):
    # Program (i, c) copies chunk c of the sequence's i-th block; num_elements = tokens * Hkv * D.
    block = tl.program_id(0)
    within = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    dense_offsets = block.to(tl.int64) * BLOCK_ELEMENTS + within
    mask = (within < BLOCK_ELEMENTS) & (dense_offsets < num_elements)
    # int64 so that block_id * BLOCK_ELEMENTS cannot overflow on caches past 2**31 elements.
    cache_offsets = tl.load(block_ids_ptr + block).to(tl.int64) * BLOCK_ELEMENTS + within
    if TO_CACHE:
        keys = tl.load(dense_ptr + dense_offsets, mask=mask)
        values = tl.load(dense_ptr + num_elements + dense_offsets, mask=mask)
        tl.store(k_cache_ptr + cache_offsets, keys, mask=mask)
        tl.store(v_cache_ptr + cache_offsets, values, mask=mask)
    else:
        keys = tl.load(k_cache_ptr + cache_offsets, mask=mask)
        values = tl.load(v_cache_ptr + cache_offsets, mask=mask)
        tl.store(dense_ptr + dense_offsets, keys, mask=mask)
        tl.store(dense_ptr + num_elements + dense_offsets, values, mask=mask)


def gather_kv_blocks(k_cache: Tensor, v_cache: Tensor, block_ids: Tensor, num_tokens: int) -> Tensor:
    """New contiguous [2, num_tokens, Hkv, D] (0 = K, 1 = V): the first num_tokens tokens in block_ids."""
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    kv = torch.empty(2, num_tokens, num_kv_heads, head_dim, dtype=k_cache.dtype, device=k_cache.device)
    num_blocks = -(-num_tokens // block_size)
    assert block_ids.numel() >= num_blocks, "block_ids must cover num_tokens"
    _launch(k_cache, v_cache, kv, block_ids, num_blocks, to_cache=False)
    return kv


def scatter_kv_blocks(kv: Tensor, k_cache: Tensor, v_cache: Tensor, block_ids: Tensor) -> None:
    """Write kv [2, num_tokens, Hkv, D] into block_ids, whose length must be ceil(num_tokens / block_size)."""
    assert kv.shape[0] == 2 and kv.shape[2:] == k_cache.shape[2:] and kv.dtype == k_cache.dtype
    assert kv.is_contiguous(), "kv must be dense: each block's tokens are copied as one run"
    num_blocks = -(-kv.shape[1] // k_cache.shape[1])
    assert block_ids.numel() == num_blocks, "block_ids must cover exactly num_tokens"
    _launch(k_cache, v_cache, kv, block_ids, num_blocks, to_cache=True)


def _launch(k_cache: Tensor, v_cache: Tensor, kv: Tensor, block_ids: Tensor, num_blocks: int, to_cache: bool) -> None:
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and v_cache.shape == k_cache.shape
    assert block_ids.dim() == 1
    if num_blocks == 0:
        return
    # Same inputs as the reference, which takes block ids on any device.
    block_ids = block_ids.to(device=k_cache.device).contiguous()
    block_elements = k_cache[0].numel()
    grid = (num_blocks, triton.cdiv(block_elements, _CHUNK))
    _block_copy_kernel[grid](
        k_cache,
        v_cache,
        kv,
        block_ids,
        kv[0].numel(),
        BLOCK_ELEMENTS=block_elements,
        CHUNK=_CHUNK,
        TO_CACHE=to_cache,
    )
