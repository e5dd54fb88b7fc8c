"""The seam for disaggregation: a request's KV as per-layer contiguous tensors plus a layout.

Exported KV is contiguous per layer ([2, tokens, kv_heads, head_dim], K then V), so the
sender's block size does not constrain the receiver: importing scatters into whatever blocks
the receiving engine has. Everything else in the layout must match exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pdserve.errors import KvLayoutMismatchError

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}

# Fields that must be equal for KV from one engine to be valid in another.
_MUST_MATCH = ("model_fingerprint", "dtype", "num_layers", "num_kv_heads", "head_dim")


@dataclass(frozen=True, slots=True)
class KvLayout:
    """Describes the KV of one model in one engine. Sizes in elements; bytes via properties."""

    model_fingerprint: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES_BY_NAME[self.dtype]

    @property
    def bytes_per_token_per_layer(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * self.torch_dtype.itemsize

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * self.bytes_per_token_per_layer

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> KvLayout:
        """Build from untrusted input (a wire message); raises KvLayoutMismatchError."""
        if not isinstance(data, dict):
            raise KvLayoutMismatchError("KV layout must be a mapping")
        try:
            layout = cls(
                model_fingerprint=str(data["model_fingerprint"]),
                dtype=str(data["dtype"]),
                num_layers=int(data["num_layers"]),
                num_kv_heads=int(data["num_kv_heads"]),
                head_dim=int(data["head_dim"]),
                block_size=int(data["block_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KvLayoutMismatchError(f"malformed KV layout: {exc!r}") from exc
        if layout.dtype not in DTYPES_BY_NAME:
            raise KvLayoutMismatchError(f"KV dtype {layout.dtype!r} is not one of {sorted(DTYPES_BY_NAME)}")
        if min(layout.num_layers, layout.num_kv_heads, layout.head_dim, layout.block_size) <= 0:
            raise KvLayoutMismatchError("KV layout sizes must be positive")
        return layout

    def check_compatible(self, other: KvLayout) -> None:
        """Raise KvLayoutMismatchError naming every field where `other` cannot be imported here."""
        diffs = [
            f"{name}: ours {getattr(self, name)!r}, theirs {getattr(other, name)!r}"
            for name in _MUST_MATCH
            if getattr(self, name) != getattr(other, name)
        ]
        if diffs:
            raise KvLayoutMismatchError("KV layout mismatch: " + "; ".join(diffs))


@dataclass(slots=True)
class KvExport:
    """A prefilled request ready to continue elsewhere.

    `layers[i]` is [2, num_tokens, num_kv_heads, head_dim] for layer i: the K/V of every
    token in `prompt_token_ids`. `first_token` was sampled from the last position and has no
    K/V yet. A migrated request's computed tokens end with output tokens it had already
    delivered: the last `resumed_tokens` of `prompt_token_ids` (0 for a fresh request).
    """

    request_id: str
    layout: KvLayout
    prompt_token_ids: list[int]
    first_token: int
    first_logprob: float | None
    layers: list[torch.Tensor]
    resumed_tokens: int = 0
    first_top_logprobs: dict[int, float] | None = None  # the first token's alternatives, if asked for

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers)

    def validate(self, layout: KvLayout) -> None:
        """Check this export against the importing engine's layout, tensor by tensor."""
        layout.check_compatible(self.layout)
        if len(self.layers) != layout.num_layers:
            raise KvLayoutMismatchError(f"expected {layout.num_layers} layers of KV, got {len(self.layers)}")
        expected = (2, self.num_tokens, layout.num_kv_heads, layout.head_dim)
        for index, tensor in enumerate(self.layers):
            if tuple(tensor.shape) != expected:
                raise KvLayoutMismatchError(f"layer {index}: KV shape {tuple(tensor.shape)}, expected {expected}")
            if tensor.dtype != layout.torch_dtype:
                raise KvLayoutMismatchError(f"layer {index}: dtype {tensor.dtype}, expected {layout.dtype}")
