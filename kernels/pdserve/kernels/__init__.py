"""Attention kernels over the paged KV cache, picking Triton or pure torch per call.

Cache layout (the engine relies on it): per layer a `k_cache` and a `v_cache`, each contiguous
[num_blocks, block_size, num_kv_heads, head_dim]; token slot = block_id * block_size + offset_in_block.
Queries have num_heads = num_kv_heads * group heads, and query head h reads kv head h // group.

Triton runs when the tensors are on CUDA and triton imports; otherwise the torch reference runs, except
for decode attention on CPU tensors, which runs a C kernel built on first use (cpu_paged_attention.py)
when it builds and the dtype is float32 or bfloat16, and prefill attention on bfloat16 CPU caches, which
runs an AVX-512 BF16 C kernel (cpu_prefill_attention.py) where the CPU has those instructions.
PDSERVE_KERNELS=torch|triton|native forces one: triton on CPU tensors only works under TRITON_INTERPRET=1;
native raises if the decode kernel cannot be built, and leaves everything the C kernels do not cover to
the reference.
"""

from __future__ import annotations

import functools
import os

from pdserve.kernels import cpu_paged_attention, cpu_prefill_attention, reference
from torch import Tensor

__all__ = [
    "gather_kv_blocks",
    "paged_attention_decode",
    "paged_attention_prefill",
    "scatter_kv_blocks",
    "store_kv",
]

BACKEND_ENV = "PDSERVE_KERNELS"


def store_kv(key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write token t of key/value [T, Hkv, D] (views allowed) into slot slot_mapping[t] (int64 [T])."""
    if _use_triton(k_cache):
        from pdserve.kernels.triton_store import store_kv as triton_store_kv

        triton_store_kv(key, value, k_cache, v_cache, slot_mapping)
    else:
        reference.store_kv(key, value, k_cache, v_cache, slot_mapping)


def paged_attention_decode(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """query [B, H, D] attends to all context_lens[b] (int32, >= 1) tokens of its blocks; returns [B, H, D].

    block_tables [B, max_blocks] int32; entries past a sequence's last block may be any valid block id.
    """
    forced = os.environ.get(BACKEND_ENV, "")
    if forced in ("", "native") and cpu_paged_attention.supports(query, k_cache):
        if cpu_paged_attention.available():
            native_decode = cpu_paged_attention.paged_attention_decode
            return native_decode(query, k_cache, v_cache, block_tables, context_lens, scale)
        if forced:
            raise RuntimeError(f"{BACKEND_ENV}=native but the C kernel did not build; see the warning logged above")
    if _use_triton(query):
        from pdserve.kernels.triton_paged_attention import paged_attention_decode as triton_decode

        return triton_decode(query, k_cache, v_cache, block_tables, context_lens, scale)
    return reference.paged_attention_decode(query, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_prefill(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_seqlens_q: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """Causal attention of packed chunks query [T, H, D] (offsets cu_seqlens_q [B+1] int32) over the cache.

    context_lens [B] int32 counts each sequence's KV tokens including its chunk, already stored.
    """
    # Unlike decode, PDSERVE_KERNELS=native does not insist: on a CPU without AVX-512 BF16 the
    # reference is this kernel's only fallback, and no setting can change that.
    native = os.environ.get(BACKEND_ENV, "") in ("", "native") and cpu_prefill_attention.supports(query, k_cache)
    if native and cpu_prefill_attention.available():
        native_prefill = cpu_prefill_attention.paged_attention_prefill
        return native_prefill(query, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
    # No Triton prefill kernel: prefill is compute-bound and the reference's per-sequence SDPA calls
    # use torch's fused attention on CUDA too, so both backends share it.
    return reference.paged_attention_prefill(query, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)


def gather_kv_blocks(k_cache: Tensor, v_cache: Tensor, block_ids: Tensor, num_tokens: int) -> Tensor:
    """New contiguous [2, num_tokens, Hkv, D] (0 = K, 1 = V): the first num_tokens tokens in block_ids."""
    if _use_triton(k_cache):
        from pdserve.kernels.triton_block_copy import gather_kv_blocks as triton_gather

        return triton_gather(k_cache, v_cache, block_ids, num_tokens)
    return reference.gather_kv_blocks(k_cache, v_cache, block_ids, num_tokens)


def scatter_kv_blocks(kv: Tensor, k_cache: Tensor, v_cache: Tensor, block_ids: Tensor) -> None:
    """Inverse of gather_kv_blocks; len(block_ids) must equal ceil(num_tokens / block_size)."""
    if _use_triton(k_cache):
        from pdserve.kernels.triton_block_copy import scatter_kv_blocks as triton_scatter

        triton_scatter(kv, k_cache, v_cache, block_ids)
    else:
        reference.scatter_kv_blocks(kv, k_cache, v_cache, block_ids)


def _use_triton(tensor: Tensor) -> bool:
    # Read per call (a dict lookup) so tests and tools can switch backends without re-importing.
    forced = os.environ.get(BACKEND_ENV, "")
    if forced in ("torch", "native"):
        return False
    if forced == "triton":
        if not _triton_importable():
            raise RuntimeError(f"{BACKEND_ENV}=triton but triton does not import; install pdserve[triton]")
        return True
    if forced:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: expected 'torch', 'triton' or 'native'")
    return tensor.is_cuda and _triton_importable()


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
