"""Pure-torch paged KV cache kernels: the CPU engine's fast path and the Triton kernels' oracle.

Cache layout: `k_cache` and `v_cache` are contiguous [num_blocks, block_size, num_kv_heads, head_dim];
token slot = block_id * block_size + offset_in_block. Query head h reads kv head h // group.
Every function runs on any device and never loops over tokens in Python. Decode attends for the whole
batch at once (halving it by length when lengths differ a lot); prefill loops over sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Decode pads every sequence to the batch's longest; past this many padded tokens per real one it
# splits the batch by length instead (continuous batching puts fresh requests beside old ones).
MAX_PADDING_RATIO = 1.5


def store_kv(key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write token t of `key`/`value` [T, Hkv, D] (views allowed) into slot `slot_mapping[t]` (int64 [T])."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def paged_attention_decode(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """One query token per sequence attending to its whole context.

    query [B, H, D]; block_tables [B, max_blocks] int32 (padding entries must be valid block ids);
    context_lens [B] int32, each >= 1, in tokens. Returns [B, H, D] in the query's dtype.
    """
    # Reads the lengths back to the host; free on CPU, where this path runs in production.
    lengths = context_lens.tolist()
    if not lengths:
        return torch.empty_like(query)
    longest = max(lengths)
    if len(lengths) == 1 or len(lengths) * longest <= MAX_PADDING_RATIO * sum(lengths):
        return decode_padded(query, k_cache, v_cache, block_tables, context_lens, longest, scale)
    # Lengths too mixed to pad to the longest: halve the batch by length, each half padded to its own longest.
    out = torch.empty_like(query)
    for part in context_lens.argsort().tensor_split(2):
        out[part] = paged_attention_decode(query[part], k_cache, v_cache, block_tables[part], context_lens[part], scale)
    return out


def decode_padded(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    max_context: int,
    scale: float,
) -> Tensor:
    """paged_attention_decode as one SDPA call over every sequence padded to max_context tokens.

    Allocates K and V copies of [B, Hkv, max_context, D] per call: with glibc's default malloc settings
    each call then page-faults them in anew (ops/bench_kernels.py --keep-freed-memory shows the cost).
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    slots = _token_slots(block_tables, k_cache.shape[1], max_context)
    keys, values = _gather_head_major(k_cache, slots), _gather_head_major(v_cache, slots)
    # The query heads sharing a kv head become that head's "query rows", so SDPA reads each K/V once;
    # enable_gqa=True expands K/V per query head instead and measured slower on CPU (ops/bench_kernels.py).
    grouped = query.reshape(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    positions = torch.arange(max_context, device=query.device)
    mask = (positions < context_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, num_heads, head_dim)


def paged_attention_prefill(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_seqlens_q: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """Causal attention for packed prefill chunks whose K/V are already in the cache.

    query [T, H, D] packs B sequences at offsets cu_seqlens_q [B+1] int32. context_lens [B] int32 counts
    each sequence's KV tokens including this chunk, so query i of a q_len-token chunk sits at position
    context_len - q_len + i and sees KV positions <= that. Returns [T, H, D].
    """
    out = torch.empty_like(query)
    starts = cu_seqlens_q.tolist()
    # A loop over sequences is fine here: each iteration is a compute-bound SDPA over a whole chunk.
    for seq, context_len in enumerate(context_lens.tolist()):
        start, end = starts[seq], starts[seq + 1]
        if end == start:
            continue
        keys = _gather_blocks(k_cache, block_tables[seq], context_len)
        values = _gather_blocks(v_cache, block_tables[seq], context_len)
        out[start:end] = _causal_attention(query[start:end].transpose(0, 1), keys, values, scale).transpose(0, 1)
    return out


def gather_kv_blocks(k_cache: Tensor, v_cache: Tensor, block_ids: Tensor, num_tokens: int) -> Tensor:
    """Copy the first `num_tokens` tokens of the sequence stored in `block_ids` (in order) out of the cache.

    Returns a new contiguous [2, num_tokens, Hkv, D] tensor: index 0 holds K, index 1 holds V.
    """
    num_kv_heads, head_dim = k_cache.shape[2:]
    block_size = k_cache.shape[1]
    assert block_ids.numel() >= -(-num_tokens // block_size), "block_ids must cover num_tokens"
    slots = _token_slots(block_ids, block_size, num_tokens)
    kv = k_cache.new_empty(2, num_tokens, num_kv_heads, head_dim)
    torch.index_select(k_cache.view(-1, num_kv_heads, head_dim), 0, slots, out=kv[0])
    torch.index_select(v_cache.view(-1, num_kv_heads, head_dim), 0, slots, out=kv[1])
    return kv


def scatter_kv_blocks(kv: Tensor, k_cache: Tensor, v_cache: Tensor, block_ids: Tensor) -> None:
    """Inverse of `gather_kv_blocks`: write kv [2, num_tokens, Hkv, D] into `block_ids`, in order.

    Needs len(block_ids) == ceil(num_tokens / block_size); the last block's tail past num_tokens is untouched.
    """
    num_kv_heads, head_dim = k_cache.shape[2:]
    block_size = k_cache.shape[1]
    assert block_ids.numel() == -(-kv.shape[1] // block_size), "block_ids must cover exactly num_tokens"
    slots = _token_slots(block_ids, block_size, kv.shape[1])
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, kv[0])
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, kv[1])


def _token_slots(block_ids: Tensor, block_size: int, num_tokens: int) -> Tensor:
    """int64 [..., num_tokens]: slots of the first num_tokens tokens stored in each row of block_ids [..., n]."""
    block_ids = block_ids[..., : -(-num_tokens // block_size)].to(dtype=torch.int64)
    offsets = torch.arange(block_size, device=block_ids.device)
    return (block_ids[..., None] * block_size + offsets).flatten(-2)[..., :num_tokens]


def _gather_head_major(cache: Tensor, slots: Tensor) -> Tensor:
    """The tokens in slots [..., L] as a new contiguous [..., Hkv, L, D] tensor.

    Head-major so that SDPA reads each (sequence, kv head) as one dense matrix: gathering rows of D
    values costs a little more than gathering whole blocks, but SDPA on the strided view of a block
    gather measured slower by more than that (ops/bench_kernels.py).
    """
    num_kv_heads, head_dim = cache.shape[2:]
    heads = torch.arange(num_kv_heads, device=slots.device)[:, None]
    rows = slots[..., None, :] * num_kv_heads + heads
    return torch.index_select(cache.view(-1, head_dim), 0, rows.flatten()).view(*rows.shape, head_dim)


def _gather_blocks(cache: Tensor, block_ids: Tensor, num_tokens: int) -> Tensor:
    """[Hkv, num_tokens, D] (a strided view of a new tensor): the first num_tokens tokens in block_ids.

    Copies whole blocks: for one sequence this costs fewer small ops than _gather_head_major, which
    measured faster for prefill chunks of a few tokens and the same for long ones.
    """
    blocks = torch.index_select(cache, 0, block_ids[: -(-num_tokens // cache.shape[1])])
    return blocks.flatten(0, 1)[:num_tokens].transpose(0, 1)


def _causal_attention(query: Tensor, keys: Tensor, values: Tensor, scale: float) -> Tensor:
    """query [H, q_len, D] at the last q_len of the keys' positions; keys, values [Hkv, ctx, D]."""
    q_len, context_len = query.shape[1], keys.shape[1]
    # 4-D inputs: with 3-D ones SDPA on CPU takes the slow math path instead of its flash kernel
    # (about 3x slower for a 256-token chunk, ops/bench_kernels.py).
    q4 = query.unsqueeze(0)
    if q_len == context_len:
        out = F.scaled_dot_product_attention(
            q4, keys.unsqueeze(0), values.unsqueeze(0), is_causal=True, scale=scale, enable_gqa=True
        )
        return out[0]
    # SDPA's is_causal aligns the mask top-left; a chunk after a cached prefix needs it bottom-right.
    # With a mask, GQA must be expanded by hand to stay on the fast path.
    group = query.shape[0] // keys.shape[0]
    positions = torch.arange(context_len, device=query.device)
    mask = positions[None, :] <= positions[context_len - q_len :, None]
    k4 = keys.repeat_interleave(group, 0).unsqueeze(0)
    v4 = values.repeat_interleave(group, 0).unsqueeze(0)
    return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, scale=scale)[0]
