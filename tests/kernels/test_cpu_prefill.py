"""The AVX-512 BF16 prefill kernel (cpu_prefill_attention) against float64 attention and the torch
reference: causal chunks after cached prefixes, every group size, head dims up to 256, strided queries,
bad metadata, and which kernel the dispatcher picks."""

from __future__ import annotations

import pdserve.kernels as kernels
import pytest
import torch
from paged_cases import PagedCase, make_case, naive_prefill
from pdserve.kernels import cpu_prefill_attention, native_build, reference


def _cpu_has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "avx512_bf16" in line.split() for line in cpuinfo)
    except OSError:
        return False


# Where the CPU has the instructions and a compiler is present, the kernel must build: a build that
# silently fell back would leave it untested, so these tests fail rather than skip.
pytestmark = pytest.mark.skipif(
    native_build.find_compiler() is None or not _cpu_has_avx512_bf16(),
    reason="the prefill kernel needs a C compiler and a CPU with AVX-512 BF16",
)

# (atol, rtol) against float64: inputs, probabilities and the output are rounded to bfloat16.
ATOL, RTOL = 2e-2, 2e-2
# (num_heads, num_kv_heads): query heads per kv head 1, 2, 4 and 8.
HEADS = [(4, 4), (8, 4), (8, 2), (8, 1)]
# (q_len, context_len): whole prompts shorter and longer than a 64-key tile and a 64-token work item,
# chunks after a cached prefix, one-token chunks, and an empty chunk.
CHUNKS = [(7, 7), (5, 13), (1, 9), (1, 1), (70, 70), (130, 300), (0, 20), (200, 200)]


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    assert cpu_prefill_attention.available(), "the CPU has AVX-512 BF16 but the kernel did not build; see the warning"


def _chunks_case(
    chunks: list[tuple[int, int]], block_size: int, num_heads: int, num_kv_heads: int, head_dim: int, seed: int = 0
) -> tuple[torch.Tensor, PagedCase, list[int]]:
    case = make_case([c for _, c in chunks], block_size, num_kv_heads, head_dim, torch.bfloat16, seed=seed)
    cu_seqlens = [0]
    for q_len, _ in chunks:
        cu_seqlens.append(cu_seqlens[-1] + q_len)
    # A transposed view, as the engine passes slices of the packed q/k/v projection.
    gen = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(num_heads, cu_seqlens[-1], head_dim, generator=gen).to(torch.bfloat16).transpose(0, 1)
    return query, case, cu_seqlens


def _args(query: torch.Tensor, case: PagedCase, cu_seqlens: list[int], scale: float) -> tuple:
    cu = torch.tensor(cu_seqlens, dtype=torch.int32)
    return query, case.k_cache, case.v_cache, case.block_tables, cu, case.context_lens, scale


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("head_dim", [16, 64, 80, 128])
def test_matches_naive_and_reference(block_size: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    query, case, cu_seqlens = _chunks_case(CHUNKS, block_size, num_heads, num_kv_heads, head_dim, seed=head_dim)
    scale = head_dim**-0.5
    out = cpu_prefill_attention.paged_attention_prefill(*_args(query, case, cu_seqlens, scale))
    assert out.shape == query.shape and out.dtype == torch.bfloat16
    expected = naive_prefill(query, case, cu_seqlens, scale)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=RTOL)
    # No worse than torch's own bf16 kernel, element for element, but for one bf16 rounding step.
    ours = (out.double() - expected).abs()
    torch_error = (reference.paged_attention_prefill(*_args(query, case, cu_seqlens, scale)).double() - expected).abs()
    assert ours.max() <= torch_error.max() + 2**-7 * expected.abs().max()


def test_head_dim_256_and_a_long_prompt_on_one_kv_head() -> None:
    for chunks, heads, head_dim in (([(17, 300), (1, 40)], (16, 2), 256), ([(1000, 1000)], (8, 1), 64)):
        query, case, cu_seqlens = _chunks_case(chunks, 16, *heads, head_dim)
        out = cpu_prefill_attention.paged_attention_prefill(*_args(query, case, cu_seqlens, 0.1))
        torch.testing.assert_close(out.double(), naive_prefill(query, case, cu_seqlens, 0.1), atol=ATOL, rtol=RTOL)


def test_large_scores_do_not_overflow() -> None:
    """A softmax over scores in the hundreds must subtract the running maximum, or exp overflows."""
    query, case, cu_seqlens = _chunks_case([(90, 150)], 16, 8, 4, 64, seed=3)
    query = query * 30
    out = cpu_prefill_attention.paged_attention_prefill(*_args(query, case, cu_seqlens, 1.0))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), naive_prefill(query, case, cu_seqlens, 1.0), atol=ATOL, rtol=RTOL)


def test_thread_count_does_not_change_results() -> None:
    query, case, cu_seqlens = _chunks_case(CHUNKS, 16, 8, 2, 64, seed=5)
    args = _args(query, case, cu_seqlens, 0.125)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_prefill_attention.paged_attention_prefill(*args)
        torch.set_num_threads(3)
        three = cpu_prefill_attention.paged_attention_prefill(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_bad_metadata_raises_instead_of_reading_out_of_bounds() -> None:
    query, case, cu_seqlens = _chunks_case([(5, 13), (7, 7)], 4, 4, 4, 16)
    args = list(_args(query, case, cu_seqlens, 1.0))
    bad_table = case.block_tables.clone()
    bad_table[0, 1] = case.k_cache.shape[0]
    with pytest.raises(ValueError, match="block table entry"):
        cpu_prefill_attention.paged_attention_prefill(*args[:3], bad_table, *args[4:])
    short = torch.tensor([4, 7], dtype=torch.int32)  # a 5-token chunk cannot sit in 4 tokens of context
    with pytest.raises(ValueError, match="context length"):
        cpu_prefill_attention.paged_attention_prefill(*args[:5], short, args[6])
    offsets = torch.tensor([0, 13, 12], dtype=torch.int32)  # ends at the 12 tokens, but goes back
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        cpu_prefill_attention.paged_attention_prefill(*args[:4], offsets, *args[5:])


@pytest.mark.parametrize("forced", ["", "native", "torch"])
def test_dispatch(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    if forced:
        monkeypatch.setenv(kernels.BACKEND_ENV, forced)
    query, case, cu_seqlens = _chunks_case(CHUNKS, 16, 8, 2, 64, seed=7)
    args = _args(query, case, cu_seqlens, 0.125)
    expected_kernel = reference if forced == "torch" else cpu_prefill_attention
    assert torch.equal(kernels.paged_attention_prefill(*args), expected_kernel.paged_attention_prefill(*args))


def test_what_the_kernel_does_not_take_runs_the_reference() -> None:
    """float32 (the exact path the HF parity tests use) and a head_dim that is no multiple of 16."""
    for dtype, head_dim in ((torch.float32, 64), (torch.bfloat16, 24)):
        case = make_case([9, 20], 16, 2, head_dim, dtype, seed=1)
        query = torch.randn(29, 4, head_dim).to(dtype)
        args = (query, case.k_cache, case.v_cache, case.block_tables, torch.tensor([0, 9, 29], dtype=torch.int32))
        full = (*args, case.context_lens, 0.2)
        assert not cpu_prefill_attention.supports(query, case.k_cache)
        assert torch.equal(kernels.paged_attention_prefill(*full), reference.paged_attention_prefill(*full))
