"""The torch reference kernels against a token-by-token float64 computation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from paged_cases import make_case, naive_decode, naive_prefill, sequence_kv
from pdserve.kernels import reference

# (atol, rtol) against float64: fp32 is exact up to summation order; bf16 rounds inputs and output.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = list(TOLERANCES)
# (num_heads, num_kv_heads): plain multi-head, grouped query, multi-query.
HEADS = [(4, 4), (8, 2), (6, 1)]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=rtol)


# Mixed lengths (one token, an exact block multiple, ragged) make decode split the batch by length;
# similar ones run as one padded call.
DECODE_LENGTHS = {"mixed": [1, 5, 16, 37, 23], "similar": [33, 37, 30, 36, 29]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("lengths", list(DECODE_LENGTHS))
def test_decode_matches_naive(
    dtype: torch.dtype, block_size: int, num_heads: int, num_kv_heads: int, lengths: str
) -> None:
    head_dim = 16
    context_lens = DECODE_LENGTHS[lengths]
    case = make_case(context_lens, block_size, num_kv_heads, head_dim, dtype, seed=block_size + num_heads)
    # The engine passes a transposed view, so the query is not contiguous.
    query = torch.randn(num_heads, len(context_lens), head_dim).to(dtype).transpose(0, 1)
    scale = head_dim**-0.5
    out = reference.paged_attention_decode(
        query, case.k_cache, case.v_cache, case.block_tables, case.context_lens, scale
    )
    assert out.shape == query.shape and out.dtype == dtype
    _assert_close(out, naive_decode(query, case, scale), dtype)


def test_decode_splits_only_mixed_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    padded = reference.decode_padded

    def counting(query: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(query.shape[0])
        return padded(query, *args)

    monkeypatch.setattr(reference, "decode_padded", counting)
    for lengths in DECODE_LENGTHS.values():
        case = make_case(lengths, 4, 2, 8, torch.float32)
        query = torch.randn(len(lengths), 4, 8)
        reference.paged_attention_decode(query, case.k_cache, case.v_cache, case.block_tables, case.context_lens, 1.0)
    mixed, similar = len(DECODE_LENGTHS["mixed"]), len(DECODE_LENGTHS["similar"])
    assert sum(calls[:-1]) == mixed and len(calls) > 2 and calls[-1] == similar


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
def test_prefill_matches_naive(dtype: torch.dtype, block_size: int, num_heads: int, num_kv_heads: int) -> None:
    head_dim = 16
    # (q_len, context_len): whole prompts, chunks after a cached prefix, a one-token chunk.
    chunks = [(7, 7), (5, 13), (1, 9), (20, 20), (11, 30)]
    case = make_case([c for _, c in chunks], block_size, num_kv_heads, head_dim, dtype, seed=num_heads)
    cu_seqlens = [0]
    for q_len, _ in chunks:
        cu_seqlens.append(cu_seqlens[-1] + q_len)
    query = torch.randn(num_heads, cu_seqlens[-1], head_dim).to(dtype).transpose(0, 1)
    scale = 0.3
    out = reference.paged_attention_prefill(
        query,
        case.k_cache,
        case.v_cache,
        case.block_tables,
        torch.tensor(cu_seqlens, dtype=torch.int32),
        case.context_lens,
        scale,
    )
    assert out.shape == query.shape and out.dtype == dtype
    _assert_close(out, naive_prefill(query, case, cu_seqlens, scale), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_writes_each_token_to_its_slot(dtype: torch.dtype) -> None:
    num_blocks, block_size, num_kv_heads, head_dim = 6, 4, 2, 8
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    # Views of a fused QKV output, as the model produces them: tokens are strided.
    qkv = torch.randn(5, 3, num_kv_heads, head_dim).to(dtype)
    key, value = qkv[:, 1], qkv[:, 2]
    slots = [3, 4, 22, 9, 0]
    reference.store_kv(key, value, k_cache, v_cache, torch.tensor(slots))
    for token, slot in enumerate(slots):
        assert torch.equal(k_cache[slot // block_size, slot % block_size], key[token])
        assert torch.equal(v_cache[slot // block_size, slot % block_size], value[token])
    assert int((k_cache != 0).any(dim=(2, 3)).sum()) == len(slots)


@pytest.mark.parametrize("num_tokens", [1, 8, 11])
def test_gather_then_scatter_round_trips_into_other_blocks(num_tokens: int) -> None:
    block_size = 4
    case = make_case([num_tokens], block_size, 2, 8, torch.bfloat16, seed=num_tokens)
    num_blocks = -(-num_tokens // block_size)
    block_ids = case.block_tables[0, :num_blocks]
    kv = reference.gather_kv_blocks(case.k_cache, case.v_cache, block_ids, num_tokens)
    assert kv.shape == (2, num_tokens, 2, 8) and kv.is_contiguous()
    keys, values = sequence_kv(case, 0, num_tokens)
    assert torch.equal(kv[0].double(), keys) and torch.equal(kv[1].double(), values)

    k_cache, v_cache = torch.zeros_like(case.k_cache), torch.zeros_like(case.v_cache)
    targets = torch.arange(k_cache.shape[0] - num_blocks, k_cache.shape[0])
    reference.scatter_kv_blocks(kv, k_cache, v_cache, targets)
    assert torch.equal(reference.gather_kv_blocks(k_cache, v_cache, targets, num_tokens), kv)
    # Nothing outside the first num_tokens slots of the target blocks was written.
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    written.view(-1)[(targets[:, None] * block_size + torch.arange(block_size)).flatten()[:num_tokens]] = True
    assert not k_cache[~written].any() and not v_cache[~written].any()


def test_gather_accepts_a_block_table_longer_than_needed() -> None:
    case = make_case([9], 4, 1, 8, torch.float32)
    padded = torch.cat([case.block_tables[0], torch.zeros(2, dtype=torch.int32)])
    kv = reference.gather_kv_blocks(case.k_cache, case.v_cache, padded, 9)
    assert torch.equal(kv, reference.gather_kv_blocks(case.k_cache, case.v_cache, case.block_tables[0], 9))
