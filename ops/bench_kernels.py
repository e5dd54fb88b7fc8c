"""Micro-benchmark of the torch reference attention on CPU, next to the variants it was chosen over.

    python ops/bench_kernels.py [--iters 30] [--threads N]

Prints the median milliseconds per call. The default shape is the engine's CPU target: a decode batch
of 64 sequences of 256-320 tokens, 8 heads over 4 kv heads, head_dim 64, block_size 16. Each variant
runs on its own warm cache (the engine's 8 layers read 8 cold ones), so this ranks variants; it does
not predict a step time. On a shared machine, --threads 1 gives the steadiest numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pdserve.kernels import reference
from torch import Tensor

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 8, 4, 64, 16


def median_ms(fn: Callable[[], object], iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def paged_cache(context_lens: list[int], dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """k_cache, v_cache, block_tables, context_lens with each sequence's blocks scattered at random."""
    per_seq = [-(-n // BLOCK_SIZE) for n in context_lens]
    order = torch.randperm(sum(per_seq) + 1)
    tables = torch.zeros(len(context_lens), max(per_seq), dtype=torch.int32)
    offset = 0
    for seq, count in enumerate(per_seq):
        tables[seq, :count] = order[offset : offset + count]
        offset += count
    shape = (len(order), BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k_cache, v_cache = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    return k_cache, v_cache, tables, torch.tensor(context_lens, dtype=torch.int32)


def decode_variants(dtype: torch.dtype, context_lens: list[int]) -> dict[str, Callable[[], object]]:
    k_cache, v_cache, tables, lens = paged_cache(context_lens, dtype)
    batch, max_ctx = len(context_lens), max(context_lens)
    query = torch.randn(batch, HEADS, HEAD_DIM, dtype=dtype)
    scale = HEAD_DIM**-0.5
    mask = (torch.arange(max_ctx) < lens[:, None])[:, None, None, :]

    def gather_index_select() -> tuple[Tensor, Tensor]:
        k = reference._gather_padded(k_cache, tables, max_ctx).transpose(1, 2)
        v = reference._gather_padded(v_cache, tables, max_ctx).transpose(1, 2)
        return k, v

    def gather_advanced_indexing() -> tuple[Tensor, Tensor]:
        blocks = tables.long()
        k = k_cache[blocks].view(batch, -1, KV_HEADS, HEAD_DIM)[:, :max_ctx].transpose(1, 2)
        v = v_cache[blocks].view(batch, -1, KV_HEADS, HEAD_DIM)[:, :max_ctx].transpose(1, 2)
        return k, v

    def sdpa_enable_gqa() -> Tensor:
        k, v = gather_index_select()
        return F.scaled_dot_product_attention(
            query[:, :, None], k, v, attn_mask=mask, scale=scale, enable_gqa=True
        )

    def sdpa_grouped_contiguous_kv() -> Tensor:
        k, v = gather_index_select()
        grouped = query.view(batch, KV_HEADS, -1, HEAD_DIM)
        return F.scaled_dot_product_attention(
            grouped, k.contiguous(), v.contiguous(), attn_mask=mask, scale=scale
        )

    def sdpa_grouped_advanced_indexing() -> Tensor:
        k, v = gather_advanced_indexing()
        grouped = query.view(batch, KV_HEADS, -1, HEAD_DIM)
        return F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)

    def matmul_softmax_fp32() -> Tensor:
        k, v = gather_index_select()
        grouped = query.view(batch, KV_HEADS, -1, HEAD_DIM).float()
        scores = (grouped @ k.float().transpose(-1, -2)) * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs @ v.float()).to(dtype)

    def matmul_scores_in_dtype() -> Tensor:
        # Like transformers' eager attention: bf16 scores lose precision (about 3x the error of SDPA).
        k, v = gather_index_select()
        k, v = k.contiguous(), v.contiguous()
        grouped = query.view(batch, KV_HEADS, -1, HEAD_DIM)
        scores = (grouped @ k.transpose(-1, -2)).float() * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return probs.to(dtype) @ v

    return {
        "reference": lambda: reference.paged_attention_decode(query, k_cache, v_cache, tables, lens, scale),
        "  one padded call (no length split)": lambda: reference.decode_padded(
            query, k_cache, v_cache, tables, lens, max_ctx, scale
        ),
        "  gather only (index_select)": gather_index_select,
        "  gather only (advanced indexing)": gather_advanced_indexing,
        "  sdpa enable_gqa=True": sdpa_enable_gqa,
        "  sdpa grouped, contiguous K/V": sdpa_grouped_contiguous_kv,
        "  sdpa grouped, advanced-indexing gather": sdpa_grouped_advanced_indexing,
        "  matmul + softmax in fp32": matmul_softmax_fp32,
        "  matmul, scores in query dtype": matmul_scores_in_dtype,
    }


def prefill_variants(dtype: torch.dtype, num_seqs: int, q_len: int) -> dict[str, Callable[[], object]]:
    lens = [q_len] * num_seqs
    k_cache, v_cache, tables, context_lens = paged_cache(lens, dtype)
    query = torch.randn(num_seqs * q_len, HEADS, HEAD_DIM, dtype=dtype)
    cu_seqlens = torch.arange(0, num_seqs + 1, dtype=torch.int32) * q_len
    scale = HEAD_DIM**-0.5

    def packed_block_diagonal() -> Tensor:
        # Every sequence's keys side by side, one SDPA call with a block-diagonal causal mask.
        total = num_seqs * q_len
        k = reference._gather_padded(k_cache, tables, q_len).reshape(total, KV_HEADS, HEAD_DIM)
        v = reference._gather_padded(v_cache, tables, q_len).reshape(total, KV_HEADS, HEAD_DIM)
        seq_of = torch.arange(total) // q_len
        pos = torch.arange(total)
        mask = (seq_of[:, None] == seq_of[None, :]) & (pos[None, :] <= pos[:, None])
        return F.scaled_dot_product_attention(
            query.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        ).transpose(0, 1)

    def loop_repeat_kv() -> Tensor:
        out = torch.empty_like(query)
        for seq in range(num_seqs):
            k = reference._gather_padded(k_cache, tables[seq : seq + 1], q_len)[0].transpose(0, 1)
            v = reference._gather_padded(v_cache, tables[seq : seq + 1], q_len)[0].transpose(0, 1)
            group = HEADS // KV_HEADS
            rows = slice(seq * q_len, (seq + 1) * q_len)
            out[rows] = F.scaled_dot_product_attention(
                query[rows].transpose(0, 1),
                k.repeat_interleave(group, 0),
                v.repeat_interleave(group, 0),
                is_causal=True,
                scale=scale,
            ).transpose(0, 1)
        return out

    return {
        "reference (loop over sequences)": lambda: reference.paged_attention_prefill(
            query, k_cache, v_cache, tables, cu_seqlens, context_lens, scale
        ),
        "  loop, repeat_interleave K/V": loop_repeat_kv,
        "  packed, block-diagonal mask": packed_block_diagonal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, median ms per call")
    target = torch.randint(256, 321, (64,)).tolist()
    mixed = torch.randint(16, 1025, (64,)).tolist()
    for dtype in (torch.bfloat16, torch.float32):
        for label, lens in (("ctx 256-320", target), ("ctx 16-1024 mixed", mixed)):
            print(f"\ndecode B=64 {label} {dtype}")
            for name, fn in decode_variants(dtype, lens).items():
                print(f"  {name:45s} {median_ms(fn, args.iters):8.3f}")
        for num_seqs, q_len in ((64, 16), (4, 512)):
            print(f"\nprefill {num_seqs} x {q_len} tokens {dtype}")
            for name, fn in prefill_variants(dtype, num_seqs, q_len).items():
                print(f"  {name:45s} {median_ms(fn, max(3, args.iters // 5)):8.3f}")


if __name__ == "__main__":
    main()
