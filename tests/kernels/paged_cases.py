"""Random paged KV caches and a naive float64 attention to check the kernels against.

The naive side reads the cache one token at a time through the block table, so it shares no
indexing code with the kernels under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(slots=True)
class PagedCase:
    """A cache holding B sequences whose blocks are scattered over it in random order."""

    k_cache: Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: Tensor
    block_tables: Tensor  # [B, max_blocks] int32, padded with block 0
    context_lens: Tensor  # [B] int32, tokens

    @property
    def block_size(self) -> int:
        return self.k_cache.shape[1]


def make_case(
    context_lens: list[int],
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    seed: int = 0,
    device: str = "cpu",
) -> PagedCase:
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    # Spare blocks so that the cache holds data no sequence may read.
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    block_tables = torch.zeros(len(context_lens), max(blocks_per_seq), dtype=torch.int32)
    for seq, count in enumerate(blocks_per_seq):
        block_tables[seq, :count] = torch.tensor(order[:count])
        order = order[count:]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return PagedCase(
        k_cache=torch.randn(shape, generator=gen).to(device=device, dtype=dtype),
        v_cache=torch.randn(shape, generator=gen).to(device=device, dtype=dtype),
        block_tables=block_tables.to(device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
    )


def sequence_kv(case: PagedCase, seq: int, num_tokens: int) -> tuple[Tensor, Tensor]:
    """Sequence seq's first num_tokens keys and values, [num_tokens, Hkv, D] float64, token by token."""
    keys, values = [], []
    for pos in range(num_tokens):
        block = int(case.block_tables[seq, pos // case.block_size])
        keys.append(case.k_cache[block, pos % case.block_size])
        values.append(case.v_cache[block, pos % case.block_size])
    return torch.stack(keys).double().cpu(), torch.stack(values).double().cpu()


def naive_attention(query: Tensor, keys: Tensor, values: Tensor, scale: float) -> Tensor:
    """query [H, D] over all of keys/values [n, Hkv, D]; float64 [H, D]."""
    num_heads, num_kv_heads = query.shape[0], keys.shape[1]
    group = num_heads // num_kv_heads
    out = []
    for head in range(num_heads):
        kv_head = head // group
        scores = keys[:, kv_head] @ query[head].double() * scale
        out.append(torch.softmax(scores, dim=0) @ values[:, kv_head])
    return torch.stack(out)


def naive_decode(query: Tensor, case: PagedCase, scale: float) -> Tensor:
    """[B, H, D] float64: query b attends to all context_lens[b] tokens of sequence b."""
    out = []
    for seq, context_len in enumerate(case.context_lens.tolist()):
        keys, values = sequence_kv(case, seq, context_len)
        out.append(naive_attention(query[seq].cpu(), keys, values, scale))
    return torch.stack(out)


def naive_prefill(query: Tensor, case: PagedCase, cu_seqlens_q: list[int], scale: float) -> Tensor:
    """[T, H, D] float64: query i of a q_len chunk sits at context_len - q_len + i and sees up to there."""
    out = []
    for seq, context_len in enumerate(case.context_lens.tolist()):
        keys, values = sequence_kv(case, seq, context_len)
        q_len = cu_seqlens_q[seq + 1] - cu_seqlens_q[seq]
        for i in range(q_len):
            visible = context_len - q_len + i + 1
            row = query[cu_seqlens_q[seq] + i].cpu()
            out.append(naive_attention(row, keys[:visible], values[:visible], scale))
    return torch.stack(out)
