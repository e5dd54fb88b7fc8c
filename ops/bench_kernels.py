"""Micro-benchmark of the CPU attention kernels: the native C decode kernel, the torch reference, and the
variants the reference was chosen over.

    python ops/bench_kernels.py [--iters 30] [--threads N] [--keep-freed-memory]
    python ops/bench_kernels.py --native [--layers 8] [--threads N]

Prints the median milliseconds per call. The default shape is the engine's CPU target: a decode batch
of 64 sequences of 256-320 tokens, 8 heads over 4 kv heads, head_dim 64, block_size 16; the mixed one
is 56 sequences of 16-1280 tokens, as when fresh requests join old ones. Each variant runs on its own
warm cache (the engine's 8 layers read 8 cold ones), so this ranks variants; it does not predict a step
time. --native prints only the native kernel against the reference, each call on the next of --layers
caches, as the engine's layers do. On a shared machine, --threads 1 gives the steadiest numbers, and
--keep-freed-memory takes the allocator's page faults out of the comparison.

Measured for the native kernel (ms per call, B=64 ctx 256-320 bf16 / B=56 ctx 16-1280 bf16, 8 layer
caches, 1 thread, AMD EPYC with AVX-512): the two-pass softmax 2.8 / 5.4 against 3.5 / 6.8 for an
online softmax over groups of 16 tokens; prefetching each row 16 tokens ahead halved the time of the
first version; one row prefetched per row used beat prefetching a group's rows in one burst by ~30%;
keeping the group's accumulators in registers (a copy per group size) gained ~5% for 6x the compile time.
A decode kernel on AVX-512 BF16 dot products (the prefill kernel's instructions) was twice as fast as
this one with its rows in L2, but 15-30% slower on rows from memory, with or without prefetching; not kept.

Measured for the bf16 prefill kernel (cpu_prefill_attention), 2 threads: 8 x 256 tokens 3.0-3.4 ms against
9.3-10.3 ms for the reference (torch's flash kernel per sequence).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pdserve.kernels import cpu_paged_attention, cpu_prefill_attention, reference
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


def gather_blocks(cache: Tensor, tables: Tensor, num_tokens: int) -> Tensor:
    """[B, num_tokens, Hkv, D]: whole blocks by index_select (token-major, the layout of the cache)."""
    blocks = tables[:, : -(-num_tokens // BLOCK_SIZE)]
    gathered = torch.index_select(cache, 0, blocks.flatten())
    return gathered.view(blocks.shape[0], -1, KV_HEADS, HEAD_DIM)[:, :num_tokens]


def decode_variants(dtype: torch.dtype, context_lens: list[int]) -> dict[str, Callable[[], object]]:
    k_cache, v_cache, tables, lens = paged_cache(context_lens, dtype)
    batch, max_ctx = len(context_lens), max(context_lens)
    query = torch.randn(batch, HEADS, HEAD_DIM, dtype=dtype)
    grouped = query.view(batch, KV_HEADS, -1, HEAD_DIM)
    scale = HEAD_DIM**-0.5
    mask = (torch.arange(max_ctx) < lens[:, None])[:, None, None, :]

    def gather_head_major() -> tuple[Tensor, Tensor]:
        slots = reference._token_slots(tables, BLOCK_SIZE, max_ctx)
        return reference._gather_head_major(k_cache, slots), reference._gather_head_major(v_cache, slots)

    def gather_whole_blocks() -> tuple[Tensor, Tensor]:
        k, v = gather_blocks(k_cache, tables, max_ctx), gather_blocks(v_cache, tables, max_ctx)
        return k.transpose(1, 2), v.transpose(1, 2)

    def gather_advanced_indexing() -> tuple[Tensor, Tensor]:
        blocks = tables.long()
        k = k_cache[blocks].view(batch, -1, KV_HEADS, HEAD_DIM)[:, :max_ctx].transpose(1, 2)
        v = v_cache[blocks].view(batch, -1, KV_HEADS, HEAD_DIM)[:, :max_ctx].transpose(1, 2)
        return k, v

    def sdpa_on(gather: Callable[[], tuple[Tensor, Tensor]]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            k, v = gather()
            return F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)

        return run

    def sdpa_enable_gqa() -> Tensor:
        k, v = gather_head_major()
        return F.scaled_dot_product_attention(query[:, :, None], k, v, attn_mask=mask, scale=scale, enable_gqa=True)

    def matmul_softmax_fp32() -> Tensor:
        k, v = gather_head_major()
        scores = (grouped.float() @ k.float().transpose(-1, -2)) * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs @ v.float()).to(dtype)

    def matmul_scores_in_dtype() -> Tensor:
        # Like transformers' eager attention: bf16 scores lose precision (about 3x the error of SDPA).
        k, v = gather_head_major()
        scores = (grouped @ k.transpose(-1, -2)).float() * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return probs.to(dtype) @ v

    variants: dict[str, Callable[[], object]] = {
        "reference": lambda: reference.paged_attention_decode(query, k_cache, v_cache, tables, lens, scale),
    }
    if cpu_paged_attention.available():
        variants["native C kernel"] = lambda: cpu_paged_attention.paged_attention_decode(
            query, k_cache, v_cache, tables, lens, scale
        )
    return variants | {
        "  one padded call (no length split)": lambda: reference.decode_padded(
            query, k_cache, v_cache, tables, lens, max_ctx, scale
        ),
        "  gather only: head-major rows (reference)": gather_head_major,
        "  gather only: whole blocks": gather_whole_blocks,
        "  gather only: advanced indexing": gather_advanced_indexing,
        "  sdpa on whole-block gather (strided)": sdpa_on(gather_whole_blocks),
        "  sdpa on advanced-indexing gather": sdpa_on(gather_advanced_indexing),
        "  sdpa enable_gqa=True": sdpa_enable_gqa,
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
        k = gather_blocks(k_cache, tables, q_len).reshape(total, KV_HEADS, HEAD_DIM)
        v = gather_blocks(v_cache, tables, q_len).reshape(total, KV_HEADS, HEAD_DIM)
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
            k = gather_blocks(k_cache, tables[seq : seq + 1], q_len)[0].transpose(0, 1)
            v = gather_blocks(v_cache, tables[seq : seq + 1], q_len)[0].transpose(0, 1)
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

    variants: dict[str, Callable[[], object]] = {
        "reference (loop over sequences)": lambda: reference.paged_attention_prefill(
            query, k_cache, v_cache, tables, cu_seqlens, context_lens, scale
        ),
        "  loop, repeat_interleave K/V": loop_repeat_kv,
        "  packed, block-diagonal mask": packed_block_diagonal,
    }
    if cpu_prefill_attention.supports(query, k_cache) and cpu_prefill_attention.available():
        variants["native AVX-512 BF16 kernel (used for bf16)"] = lambda: cpu_prefill_attention.paged_attention_prefill(
            query, k_cache, v_cache, tables, cu_seqlens, context_lens, scale
        )
    return variants


def keep_freed_memory() -> None:
    """Stop glibc from unmapping freed memory: each call's multi-MB temporaries then stop page-faulting.

    By default glibc serves such allocations with mmap or trims them off the heap when freed, so every
    call pays a page fault per 4 KiB touched; on our VMs that doubled the decode attention time.
    """
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 1 << 30)


def native_against_reference(dtype: torch.dtype, context_lens: list[int], layers: int, iters: int) -> None:
    """One line: median ms per call of the reference and of the native kernel, each call on the next layer."""
    caches = [paged_cache(context_lens, dtype) for _ in range(layers)]
    query = torch.randn(len(context_lens), HEADS, HEAD_DIM, dtype=dtype)
    scale = HEAD_DIM**-0.5

    def rotating(kernel: Callable[..., Tensor]) -> Callable[[], Tensor]:
        turn = iter(range(1 << 62))
        return lambda: kernel(query, *caches[next(turn) % layers], scale)

    ref = median_ms(rotating(reference.paged_attention_decode), iters)
    native = median_ms(rotating(cpu_paged_attention.paged_attention_decode), iters)
    label = f"B={len(context_lens)} ctx {min(context_lens)}-{max(context_lens)}"
    print(f"  {str(dtype).removeprefix('torch.'):9s} {label:20s} {ref:10.3f} {native:10.3f} {ref / native:8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="tell glibc malloc to keep freed memory (see below)"
    )
    parser.add_argument("--native", action="store_true", help="only decode: native C kernel against the reference")
    parser.add_argument("--layers", type=int, default=8, help="caches that --native calls rotate over")
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, keep freed memory: {args.keep_freed_memory}")
    print("median ms per call")
    target = torch.randint(256, 321, (64,)).tolist()
    mixed = torch.randint(16, 1281, (56,)).tolist()
    if args.native:
        if not cpu_paged_attention.available():
            raise SystemExit("the native kernel did not build; see the warning above")
        print(f"decode attention, each call on the next of {args.layers} layer caches")
        print(f"  {'dtype':9s} {'batch':20s} {'reference':>10s} {'native':>10s} {'speedup':>9s}")
        for dtype in (torch.bfloat16, torch.float32):
            for lens in (target, mixed):
                native_against_reference(dtype, lens, args.layers, args.iters)
        return
    for dtype in (torch.bfloat16, torch.float32):
        for label, lens in (("B=64 ctx 256-320", target), ("B=56 ctx 16-1280 mixed", mixed)):
            print(f"\ndecode {label} {dtype}")
            for name, fn in decode_variants(dtype, lens).items():
                print(f"  {name:45s} {median_ms(fn, args.iters):8.3f}")
        for num_seqs, q_len in ((64, 16), (8, 256), (4, 512)):
            print(f"\nprefill {num_seqs} x {q_len} tokens {dtype}")
            for name, fn in prefill_variants(dtype, num_seqs, q_len).items():
                print(f"  {name:45s} {median_ms(fn, max(3, args.iters // 5)):8.3f}")


if __name__ == "__main__":
    main()
