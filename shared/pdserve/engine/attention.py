"""Paged attention plugged into transformers' model classes through AttentionInterface.

The model runner packs every scheduled sequence into one (1, T) batch and sets the step's
`AttentionMetadata` before the forward pass; the attention function each layer calls finds
it here, stores the new K/V into their paged slots and attends over each sequence's blocks.
Keeping metadata out of the call signature lets transformers' own forward run unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface

from pdserve.kernels import paged_attention_decode, paged_attention_prefill, store_kv

ATTN_IMPLEMENTATION = "pdserve_paged"


@dataclass(slots=True)
class AttentionMetadata:
    """Where the tokens of one packed step live in the cache.

    Decode tokens (one per sequence) come first, then the prefill chunks.
    """

    slot_mapping: torch.Tensor  # [T] int64
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [Bd, max_blocks] int32
    decode_context_lens: torch.Tensor  # [Bd] int32
    prefill_block_tables: torch.Tensor  # [Bp, max_blocks] int32
    prefill_cu_seqlens_q: torch.Tensor  # [Bp + 1] int32
    prefill_context_lens: torch.Tensor  # [Bp] int32
    k_caches: list[torch.Tensor]  # per layer [num_blocks, block_size, Hkv, D]
    v_caches: list[torch.Tensor]


class _StepState(threading.local):
    # Per thread: several engines (a test cluster, a prefill and a decode engine in one
    # process) may step at the same time on their own threads.
    metadata: AttentionMetadata | None = None


_state = _StepState()


@contextmanager
def attention_metadata(metadata: AttentionMetadata) -> Iterator[None]:
    _state.metadata = metadata
    try:
        yield
    finally:
        _state.metadata = None


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query (1, H, T, D), key/value (1, Hkv, T, D) after RoPE -> (1, T, H, D)."""
    q = query[0].transpose(0, 1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = attend(int(module.layer_idx), q, key[0].transpose(0, 1), value[0].transpose(0, 1), scale)  # type: ignore[arg-type]
    return out.unsqueeze(0), None


def attend(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Store this step's key/value [T, Hkv, D] in layer `layer`'s cache, then attend with query [T, H, D].

    Views with dense rows of D are fine (slices of one packed q/k/v projection); returns a new [T, H, D].
    """
    meta = _state.metadata
    assert meta is not None, "paged attention called outside a model-runner step"
    k_cache, v_cache = meta.k_caches[layer], meta.v_caches[layer]
    store_kv(key, value, k_cache, v_cache, meta.slot_mapping)
    num_decode = meta.num_decode_tokens
    if num_decode == query.shape[0]:
        return paged_attention_decode(
            query, k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale
        )
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_decode:
        out[:num_decode] = paged_attention_decode(
            query[:num_decode], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale
        )
    out[num_decode:] = paged_attention_prefill(
        query[num_decode:],
        k_cache,
        v_cache,
        meta.prefill_block_tables,
        meta.prefill_cu_seqlens_q,
        meta.prefill_context_lens,
        scale,
    )
    return out


def _no_mask(*args: Any, **kwargs: Any) -> None:
    # Causality and sequence boundaries come from the metadata, not from a dense mask.
    return None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
