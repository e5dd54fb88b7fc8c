"""Triton paged decode attention: one query token per sequence, online softmax over its blocks."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _paged_decode_kernel(
    out_ptr,
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    scale,
    query_seq_stride,
    query_head_stride,
    out_seq_stride,
    out_head_stride,
    block_table_stride,
    GROUP: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    # One program per (sequence, query head). Its kv head's blocks are read once per query head of
    # the group; decode is bandwidth-bound and the repeats of a block mostly hit L2.
    seq = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    tokens = tl.arange(0, BLOCK_TOKENS)
    dims = tl.arange(0, BLOCK_DIM)
    dim_mask = dims < HEAD_DIM

    context_len = tl.load(context_lens_ptr + seq)
    query = tl.load(query_ptr + seq * query_seq_stride + head * query_head_stride + dims, mask=dim_mask)
    # Everything below accumulates in fp32, whatever the cache dtype.
    query = query.to(tl.float32) * scale

    running_max = tl.full((), float("-inf"), tl.float32)
    running_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_DIM,), tl.float32)
    for block in range(0, tl.cdiv(context_len, BLOCK_SIZE)):
        # int64 so that block_id * block elements cannot overflow on caches past 2**31 elements.
        block_id = tl.load(block_tables_ptr + seq * block_table_stride + block).to(tl.int64)
        token_mask = (tokens < BLOCK_SIZE) & (block * BLOCK_SIZE + tokens < context_len)
        offsets = (
            block_id * (BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM)
            + tokens[:, None] * (NUM_KV_HEADS * HEAD_DIM)
            + kv_head * HEAD_DIM
            + dims[None, :]
        )
        tile_mask = token_mask[:, None] & dim_mask[None, :]
        keys = tl.load(k_cache_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        scores = tl.sum(keys * query[None, :], axis=1)
        scores = tl.where(token_mask, scores, float("-inf"))
        # The first block always holds position 0 (context_len >= 1), so new_max is finite from here on.
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        correction = tl.exp(running_max - new_max)
        probs = tl.exp(scores - new_max)
        values = tl.load(v_cache_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        acc = acc * correction + tl.sum(probs[:, None] * values, axis=0)
        running_sum = running_sum * correction + tl.sum(probs, axis=0)
        running_max = new_max

    out = acc / running_sum
    out_offsets = out_ptr + seq * out_seq_stride + head * out_head_stride + dims
    tl.store(out_offsets, out.to(out_ptr.dtype.element_ty), mask=dim_mask)


def paged_attention_decode(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """query [B, H, D] attends to all context_lens[b] (int32, >= 1) tokens in its blocks -> [B, H, D]."""
    batch, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, cache_head_dim = k_cache.shape
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and v_cache.shape == k_cache.shape
    assert query.stride(-1) == 1, "each query head's D values must be dense"
    assert block_tables.dim() == 2 and block_tables.shape[0] == batch and block_tables.stride(-1) == 1
    assert context_lens.shape == (batch,) and context_lens.is_contiguous()
    out = torch.empty(batch, num_heads, head_dim, dtype=query.dtype, device=query.device)
    if batch == 0:
        return out
    _paged_decode_kernel[(batch, num_heads)](
        out,
        query,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        scale,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_TOKENS=triton.next_power_of_2(block_size),
        BLOCK_DIM=triton.next_power_of_2(head_dim),
    )
    return out
