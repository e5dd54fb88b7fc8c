"""Parsing the dtype a model is loaded in: user spellings, torch dtypes and config.json's hint."""

from __future__ import annotations

from typing import Any

import torch

from pdserve.errors import ModelLoadError

_DTYPES_BY_NAME: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_ALLOWED = "'auto', 'float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16' or the matching torch dtype"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Return the torch dtype for `dtype` (a name above or a torch dtype); 'auto' is not accepted here.

    Raises ModelLoadError naming the allowed values for anything else.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES_BY_NAME.values():
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in _DTYPES_BY_NAME:
        return _DTYPES_BY_NAME[dtype.strip().lower()]
    raise ModelLoadError(f"unsupported dtype {dtype!r}: use {_ALLOWED}")


def resolve_dtype(dtype: str | torch.dtype, config: dict[str, Any]) -> torch.dtype:
    """The dtype to load in: `dtype` itself, or for 'auto' config.json's dtype/torch_dtype, else float32."""
    if not (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return parse_dtype(dtype)
    # transformers 5 writes "dtype"; older checkpoints carry "torch_dtype".
    hint = config.get("dtype") or config.get("torch_dtype")
    if hint is None or hint == "auto":
        return torch.float32
    try:
        return parse_dtype(str(hint))
    except ModelLoadError:
        raise ModelLoadError(
            f"config.json asks for dtype {hint!r}, which pdserve does not run; pass dtype= one of {_ALLOWED}"
        ) from None
