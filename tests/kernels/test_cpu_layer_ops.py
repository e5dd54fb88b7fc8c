"""The C layer kernels (cpu_layer_ops) against the torch code they replace: Hugging Face's LlamaRMSNorm,
residual add and apply_rotary_pos_emb, in float32 and bfloat16, at sizes that are not
multiples of the kernels' 16 lanes."""

from __future__ import annotations

import pytest
import torch
from pdserve.kernels import cpu_layer_ops, native_build
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

pytestmark = pytest.mark.skipif(
    native_build.find_compiler() is None, reason="no C compiler ($CC, cc or gcc) to build the native CPU kernels"
)

DTYPES = [torch.float32, torch.bfloat16]
# Rows x columns: one row, decode-sized, prefill-sized with a ragged tail, and wide enough to go multi-threaded.
SHAPES = [(1, 8), (7, 37), (64, 512), (300, 1376)]
EPS = 1e-5


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """bfloat16 results equal torch's to the bit but for float32 sums added in another order: allow one
    bfloat16 ulp on a few elements. float32 differs by that summation order and FMA contraction."""
    if expected.dtype == torch.bfloat16:
        assert (actual != expected).float().mean() < 1e-3
        torch.testing.assert_close(actual, expected, atol=1e-2, rtol=8e-3)
    else:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def native() -> None:
    assert cpu_layer_ops.available(), "a C compiler is on PATH but the kernels did not build; see the warning"


def make_norm(cols: int, dtype: torch.dtype) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(cols, eps=EPS).to(dtype)
    norm.weight.data.normal_(1.0, 0.3)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "cols"), SHAPES)
def test_rms_norm_matches_hf(dtype: torch.dtype, rows: int, cols: int) -> None:
    torch.manual_seed(rows * cols)
    x = torch.randn(rows, cols, dtype=dtype) * 3
    norm = make_norm(cols, dtype)
    close(cpu_layer_ops.rms_norm(x, norm.weight, EPS), norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_per_head_in_place(dtype: torch.dtype) -> None:
    # Qwen3's q_norm: rows are the heads of a view into a packed q/k/v projection, normed in place.
    torch.manual_seed(0)
    tokens, heads, head_dim = 5, 3, 40
    packed = torch.randn(tokens, (heads + 2) * head_dim, dtype=dtype)
    untouched = packed[:, heads * head_dim :].clone()
    q = packed[:, : heads * head_dim].view(tokens, heads, head_dim)
    norm = make_norm(head_dim, dtype)
    expected = norm(q)
    cpu_layer_ops.rms_norm(q, norm.weight, EPS, out=q)
    close(q, expected)
    assert torch.equal(packed[:, heads * head_dim :], untouched)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "cols"), SHAPES)
def test_add_rms_norm_matches_hf(dtype: torch.dtype, rows: int, cols: int) -> None:
    torch.manual_seed(rows + cols)
    x, residual = torch.randn(rows, cols, dtype=dtype), torch.randn(rows, cols, dtype=dtype)
    norm = make_norm(cols, dtype)
    stream = residual + x
    expected = norm(stream)
    out = cpu_layer_ops.add_rms_norm(x, residual, norm.weight, EPS)
    assert torch.equal(x, stream), "the residual add is one rounding, as in torch"
    close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "head_dim"), [(1, 8), (9, 40), (300, 64), (33, 128)])
def test_rotary_in_place_matches_hf(dtype: torch.dtype, tokens: int, head_dim: int) -> None:
    torch.manual_seed(tokens + head_dim)
    num_heads, num_kv_heads = 4, 2
    packed = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    heads = packed.view(tokens, -1, head_dim)
    q, k, v = heads[:, :num_heads], heads[:, num_heads : num_heads + num_kv_heads], heads[:, num_heads + num_kv_heads :]
    values = v.clone()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(tokens).float()[:, None] * inv_freq
    table = torch.cat([angles, angles], dim=-1)
    cos, sin = table.cos().to(dtype), table.sin().to(dtype)
    # HF's shapes: [batch, heads, tokens, head_dim] and cos/sin [batch, tokens, head_dim].
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    cpu_layer_ops.rotary_in_place(heads[:, : num_heads + num_kv_heads], cos, sin)
    close(q, q_ref[0].transpose(0, 1))
    close(k, k_ref[0].transpose(0, 1))
    assert torch.equal(v, values)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 7), (64, 32000), (5, 1000)])
def test_argmax_rows_matches_torch_on_float_values(rows: int, cols: int) -> None:
    gen = torch.Generator().manual_seed(cols)
    logits = torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
    if cols >= 7:
        logits[0, : cols // 2] = logits[0].max()  # ties: the first index wins
    assert torch.equal(cpu_layer_ops.argmax_rows(logits), logits.float().argmax(-1))


def test_argmax_rows_special_values() -> None:
    """NaN counts as the maximum (the first one wins), -0 equals +0, infinities order as values,
    all-negative rows, and a row-strided view."""
    logits = torch.full((7, 600), -3.0).to(torch.bfloat16)
    logits[0, 400], logits[0, 300] = float("nan"), -float("nan")
    logits[1] = -0.0
    logits[1, 10] = 0.0
    logits[2, 599] = float("inf")
    logits[3] = float("-inf")
    logits[4, 0], logits[4, 1] = 0.0, -0.0
    logits[5, 257] = -2.5
    logits[6, 255] = 1e30
    wide = torch.zeros(7, 900, dtype=torch.bfloat16)
    wide[:, :600] = logits
    for x in (logits, wide[:, :600]):
        assert torch.equal(cpu_layer_ops.argmax_rows(x), x.float().argmax(-1))
