"""Linear layers whose weights are packed once, at load, in oneDNN's blocked layout (CPU, bf16/fp16).

torch's `F.linear` on a bf16 CPU tensor runs oneDNN, which reorders the weight into its blocked
layout on every call. For a decode step (tens of rows) that reorder is a large share of each
projection: on the bench model's shapes, 64 rows, a packed weight is 8-14% faster for the layer
projections and 20% for lm_head, and 2-7% at 2048 rows (docs/benchmarks.md). The product is the
same oneDNN kernel's, so the results are bit-identical to `F.linear`; `available()` checks exactly
that on this machine, once, before anything is packed. vLLM's CPU backend packs its weights too.

The packed copy replaces the weight, so weight memory is not doubled: a packed nn.Linear keeps
an empty `weight` and answers calls through the packed one (its state_dict no longer holds the
weight). A weight shared with another module (lm_head tied to the embeddings) stays, and is
packed as a copy. `PDSERVE_PREPACK=0` turns packing off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENV_VAR = "PDSERVE_PREPACK"
# oneDNN picks its blocking for this many rows; any row count works (decode batches are tens of rows).
PACK_ROWS_HINT = 64
_DTYPES = (torch.bfloat16, torch.float16)


@functools.cache
def available(dtype: torch.dtype) -> bool:
    """Packing is on, supported for `dtype` on this CPU, and bit-identical to F.linear here."""
    if os.environ.get(ENV_VAR, "1").strip() in ("0", "false", "no", "off") or dtype not in _DTYPES:
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 80, generator=generator).to(dtype)
        bias = torch.randn(96, generator=generator).to(dtype)
        packed = PackedLinear(weight, bias)
        return all(
            torch.equal(packed(x), F.linear(x, weight, bias))
            for rows in (1, 7, 64, 130)
            for x in [torch.randn(rows, 80, generator=generator).to(dtype)]
        )
    except RuntimeError:  # a torch build whose oneDNN lacks the op for this dtype
        return False


class PackedLinear:
    """`F.linear(x, weight, bias)` with `weight` [out, in] packed once."""

    __slots__ = ("bias", "in_features", "out_features", "packed")

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
        self.bias = bias.detach() if bias is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_module(linear: nn.Linear, *, shared: bool = False) -> PackedLinear:
    """Pack `linear`'s weight and make the module call the packed one. Unless the weight is
    `shared` with another module, the module's own copy is released."""
    packed = PackedLinear(linear.weight, linear.bias)
    if not shared:
        release(linear)
    linear.forward = packed  # type: ignore[method-assign,assignment]
    return packed


def release(tensor_owner: nn.Linear) -> None:
    """Drop a weight whose values now live in a packed copy elsewhere (q/k/v inside a packed qkv)."""
    tensor_owner.weight = nn.Parameter(tensor_owner.weight.new_empty(0), requires_grad=False)
