"""Checks and error reporting that the native paged-attention wrappers share.

The C kernels compute every K/V row address from the cache's shape and trust the metadata's dtypes and
layouts; these asserts hold the Python side to that before a pointer crosses over, and `raise_for`
turns a kernel's ERR_* code into the exception its callers expect.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_cache_and_tables(query: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, batch: int) -> None:
    """query [*, H, D] with dense rows over contiguous [num_blocks, block_size, Hkv, D] caches, and
    int32 block tables [batch, max_blocks] with dense rows, on the CPU."""
    num_heads, head_dim = query.shape[-2:]
    num_kv_heads, cache_head_dim = k_cache.shape[-2:]
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and v_cache.shape == k_cache.shape
    assert v_cache.dtype == k_cache.dtype and v_cache.device == k_cache.device
    assert query.stride(-1) == 1, "each query head's D values must be dense"
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2 and block_tables.shape[0] == batch
    assert block_tables.stride(-1) == 1 and block_tables.device.type == "cpu"


def check_int32_vector(name: str, tensor: Tensor, size: int) -> None:
    assert tensor.dtype == torch.int32 and tensor.shape == (size,) and tensor.is_contiguous(), name
    assert tensor.device.type == "cpu", name


def raise_for(err: int, errors: dict[int, str], operation: str) -> None:
    """Nothing for 0; MemoryError for 1 (scratch allocation); ValueError naming the problem otherwise."""
    if err == 1:
        raise MemoryError(errors[err])
    if err:
        raise ValueError(f"{operation}: {errors.get(err, f'error {err}')}")
