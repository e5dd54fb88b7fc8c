"""A leaner forward for Llama-family decoder layers on the CPU: packed q/k/v and native elementwise kernels.

Hugging Face's layer runs RMSNorm and rotary embedding as chains of small torch ops (casts,
pow, mean, cat, mul), each a pass over memory; on two CPU cores they took about a sixth of a prefill
step. `fuse_decoder_layers` swaps each layer's forward for one that calls the C kernels in
pdserve.kernels.cpu_layer_ops, with the same rounding points, and projects q, k and v with one matmul.
The weights stay the model's own: q_proj, k_proj and v_proj become views into the packed matrix.
In bf16 and fp16 the projections' weights are then packed for oneDNN (engine/packed_linear.py), which
releases the modules' own copies. Anything it does not cover (a GPU, another activation, the kernels
failing to build) keeps HF's forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from pdserve.engine import packed_linear
from pdserve.engine.attention import attend
from pdserve.kernels import cpu_layer_ops

# Model types whose decoder layer is Llama's (pre-norm RMSNorm, rotate_half RoPE, gated MLP), up to
# Qwen2's q/k/v bias and Qwen3's per-head q/k norm, which the fused forward handles.
FUSABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

Projection = Callable[[Tensor], Tensor]  # x [T, in] -> [T, out]: an nn.Linear, or its packed form


def fuse_decoder_layers(model: PreTrainedModel) -> bool:
    """Switch `model`'s decoder layers and final norm to the fused forward; False leaves the model as it was."""
    config = model.config
    decoder: Any = model.get_decoder()
    weight = decoder.embed_tokens.weight
    fusable = (
        config.model_type in FUSABLE_MODEL_TYPES
        and getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "mlp_bias", False)
        and cpu_layer_ops.supports(weight)
        and cpu_layer_ops.available()
    )
    if not fusable:
        return False
    for layer in decoder.layers:
        layer.forward = FusedDecoderLayer.of(layer).forward
    decoder.norm.forward = FusedNorm(decoder.norm.weight, decoder.norm.variance_epsilon).forward
    return True


@dataclass(slots=True)
class FusedNorm:
    weight: Tensor
    eps: float

    def forward(self, hidden_states: Tensor) -> Tensor:
        return cpu_layer_ops.rms_norm(hidden_states[0], self.weight, self.eps).unsqueeze(0)


@dataclass(slots=True)
class FusedDecoderLayer:
    """One decoder layer's weights, laid out for the fused forward."""

    layer_idx: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    eps: float
    input_norm: Tensor
    post_attention_norm: Tensor
    qkv: Projection  # to [(H + 2 Hkv) D]: q_proj, k_proj, v_proj stacked in one matrix
    q_norm: Tensor | None  # Qwen3's per-head RMSNorm weights [D]
    k_norm: Tensor | None
    o_proj: Projection
    gate_proj: Projection
    up_proj: Projection
    down_proj: Projection

    @classmethod
    def of(cls, layer: Any) -> FusedDecoderLayer:
        """From an HF decoder layer (typed Any: its submodules are attributes torch cannot type)."""
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        qkv_weight = _pack_parameters(projections, "weight")
        qkv_bias = _pack_parameters(projections, "bias") if attn.q_proj.bias is not None else None
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        linears: tuple[nn.Linear, ...] = (attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        qkv: Projection = functools.partial(F.linear, weight=qkv_weight, bias=qkv_bias)
        others: tuple[Projection, ...] = linears
        if packed_linear.available(qkv_weight.dtype):
            qkv = packed_linear.PackedLinear(qkv_weight, qkv_bias)
            for view in projections:
                packed_linear.release(view)  # the packed copy holds q, k and v now
            others = tuple(packed_linear.pack_module(linear) for linear in linears)
        return cls(
            layer_idx=int(attn.layer_idx),
            num_heads=attn.q_proj.out_features // attn.head_dim,
            num_kv_heads=attn.k_proj.out_features // attn.head_dim,
            head_dim=int(attn.head_dim),
            scale=float(attn.scaling),
            eps=float(layer.input_layernorm.variance_epsilon),
            input_norm=layer.input_layernorm.weight,
            post_attention_norm=layer.post_attention_layernorm.weight,
            qkv=qkv,
            q_norm=q_norm.weight if q_norm is not None else None,
            k_norm=k_norm.weight if k_norm is not None else None,
            o_proj=others[0],
            gate_proj=others[1],
            up_proj=others[2],
            down_proj=others[3],
        )

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor], **kwargs: Any) -> Tensor:
        """hidden_states [1, T, C] -> [1, T, C], as the HF layer's forward (the model runner packs one row)."""
        residual = hidden_states[0]
        tokens = residual.shape[0]
        hidden = cpu_layer_ops.rms_norm(residual, self.input_norm, self.eps)
        heads = self.qkv(hidden).view(tokens, -1, self.head_dim)
        q_and_k = heads[:, : self.num_heads + self.num_kv_heads]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = heads[:, : self.num_heads], heads[:, self.num_heads : self.num_heads + self.num_kv_heads]
            cpu_layer_ops.rms_norm(q, self.q_norm, self.eps, out=q)
            cpu_layer_ops.rms_norm(k, self.k_norm, self.eps, out=k)
        cos, sin = position_embeddings
        # q and k sit side by side in each token's row, so one call rotates both.
        cpu_layer_ops.rotary_in_place(q_and_k, cos[0], sin[0])
        attn = attend(
            self.layer_idx,
            heads[:, : self.num_heads],
            heads[:, self.num_heads : self.num_heads + self.num_kv_heads],
            heads[:, self.num_heads + self.num_kv_heads :],
            self.scale,
        )
        stream = self.o_proj(attn.reshape(tokens, -1))
        # stream becomes residual + attention output, the residual stream the MLP adds to.
        hidden = cpu_layer_ops.add_rms_norm(stream, residual, self.post_attention_norm, self.eps)
        # silu then mul, each rounded, as HF does; torch's vectorized silu beat a C version here.
        activated = F.silu(self.gate_proj(hidden)).mul_(self.up_proj(hidden))
        return self.down_proj(activated).add_(stream).unsqueeze(0)


def _pack_parameters(linears: tuple[nn.Linear, ...], name: str) -> Tensor:
    """Concatenate the linears' `name` parameters and make each one a view into the result, so the packed
    copy is the only one in memory and the HF modules still see their own weights."""
    packed = torch.cat([getattr(linear, name).detach() for linear in linears])
    start = 0
    for linear in linears:
        rows = getattr(linear, name).shape[0]
        setattr(linear, name, nn.Parameter(packed[start : start + rows], requires_grad=False))
        start += rows
    return packed
