"""RMSNorm, residual add + RMSNorm, rotary embedding and greedy argmax on CPU tensors, in C.

Each replaces a chain of torch elementwise ops (a dtype cast, pow, mean, rsqrt, two muls for RMSNorm)
with one pass over memory, rounding to bfloat16 where Hugging Face's torch code does, so results
match it (tests/kernels/test_cpu_layer_ops.py). float32 and bfloat16; `supports` says whether a
tensor can go here. The library is built on first use (native_build.py); if that fails, one warning
is logged and `available` stays False, and callers keep the torch code.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from pdserve.kernels.native_build import load_bound
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_layer_ops.c")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}

_P, _I64, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES: dict[str, list[type]] = {
    "pdserve_rms_norm": [_P] * 3 + [_I64] * 5 + [_F, _INT, _INT],
    "pdserve_add_rms_norm": [_P] * 4 + [_I64] * 2 + [_F, _INT, _INT],
    "pdserve_rotary_in_place": [_P] * 3 + [_I64] * 5 + [_INT, _INT],
    "pdserve_argmax_bf16_rows": [_P] * 2 + [_I64] * 3 + [_INT],
}


def supports(tensor: Tensor) -> bool:
    """Whether the C kernels take this tensor: on the CPU, float32 or bfloat16."""
    return tensor.device.type == "cpu" and tensor.dtype in DTYPE_CODES


def available() -> bool:
    """Whether the library is built and loaded; the first call builds it (about a second)."""
    return _library() is not None


@functools.cache
def _library() -> ctypes.CDLL | None:
    return load_bound(SOURCE, _SIGNATURES, "torch")


def _lib() -> ctypes.CDLL:
    library = _library()
    assert library is not None, "the native layer kernels are not available"
    return library


def rms_norm(x: Tensor, weight: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """Llama RMSNorm over the last dim of x [..., C]: weight * (x * rsqrt(mean(x^2) + eps)) in x's dtype.

    x may be a [N, C] tensor with dense rows or a [N, H, C] view whose rows are (token, head) pairs,
    as in Qwen3's per-head q/k norm; out (default new) must have x's strides, and may be x itself.
    """
    rows, layout = _row_layout(x)
    out = torch.empty_like(x) if out is None else out
    assert out.shape == x.shape and out.stride() == x.stride() and out.dtype == x.dtype
    _check_vector(weight, x)
    _lib().pdserve_rms_norm(
        out.data_ptr(), x.data_ptr(), weight.data_ptr(), rows, x.shape[-1], *layout,
        eps, DTYPE_CODES[x.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x += residual in place (the new residual stream, rounded to x's dtype), then return RMSNorm(x).

    x and residual are dense [N, C] of one dtype; the returned tensor is new.
    """
    assert x.is_contiguous() and residual.is_contiguous() and x.shape == residual.shape and x.dim() == 2
    assert residual.dtype == x.dtype and supports(x) and supports(residual)
    _check_vector(weight, x)
    out = torch.empty_like(x)
    _lib().pdserve_add_rms_norm(
        out.data_ptr(), x.data_ptr(), residual.data_ptr(), weight.data_ptr(), x.shape[0], x.shape[1],
        eps, DTYPE_CODES[x.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out


def rotary_in_place(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Apply rotary embedding (the rotate_half form) in place to x [T, H, D] (a view, dense in D).

    cos and sin are [T, D] in x's dtype, dense, as Hugging Face's rotary embedding module returns them.
    """
    assert x.dim() == 3 and x.shape[-1] % 2 == 0
    rows, layout = _row_layout(x)
    for table in (cos, sin):
        assert table.shape == (x.shape[0], x.shape[2]) and table.is_contiguous() and table.dtype == x.dtype
        assert supports(table)
    err = _lib().pdserve_rotary_in_place(
        x.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows, x.shape[-1], *layout,
        DTYPE_CODES[x.dtype], torch.get_num_threads(),
    )  # fmt: skip
    assert err == 0, "odd rotary dimension"


def argmax_rows(x: Tensor) -> Tensor:
    """torch.argmax(x.float(), dim=-1) for bfloat16 logits x [N, V] with dense rows, without the copy:
    the first index of each row's maximum (NaN above everything, -0 equal to +0), int64 [N]."""
    assert x.dim() == 2 and x.dtype == torch.bfloat16 and supports(x) and x.stride(-1) == 1 and x.shape[1] > 0
    out = torch.empty(x.shape[0], dtype=torch.int64)
    if x.shape[0]:
        _lib().pdserve_argmax_bf16_rows(
            out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), torch.get_num_threads()
        )
    return out


def _row_layout(x: Tensor) -> tuple[int, tuple[int, int, int]]:
    """Rows of x [N, C] or [N, H, C] and (inner, outer_stride, inner_stride) in the C kernels' terms."""
    assert supports(x) and x.stride(-1) == 1, "rows must be dense"
    if x.dim() == 2:
        return x.shape[0], (1, x.stride(0), 0)
    assert x.dim() == 3
    return x.shape[0] * x.shape[1], (x.shape[1], x.stride(0), x.stride(1))


def _check_vector(weight: Tensor, x: Tensor) -> None:
    assert weight.shape == (x.shape[-1],) and weight.is_contiguous() and weight.dtype == x.dtype
    assert weight.device.type == "cpu"
