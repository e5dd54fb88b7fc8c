"""Shared fixtures: tiny models created locally (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The shape the architectures on transformers' own layers share; each adds what sets it apart.
_SMALL: dict[str, object] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 320,
    "max_position_embeddings": 1024,
}

TINY_CONFIGS: dict[str, dict[str, object]] = {
    # qkv bias, tied embeddings, GQA 4:2
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 384,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    # head_dim 32 while hidden/heads is 16; q/k norms
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 320,
        "max_position_embeddings": 1024,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    # multi-query attention (one kv head)
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 300,
        "max_position_embeddings": 1024,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    # The architectures served through transformers' own layers (pdserve's paged attention).
    # fused qkv and gate/up projections
    "phi3": {
        **_SMALL,
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "num_key_value_heads": 2,
        "pad_token_id": 0,
    },
    # embeddings scaled by sqrt(hidden), (1 + w) norms, gelu, MQA
    "gemma": {
        **_SMALL,
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "num_key_value_heads": 1,
        "head_dim": 16,
    },
    # embedding, residual and attention multipliers; logits divided by logits_scaling
    "granite": {
        **_SMALL,
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        "num_key_value_heads": 2,
        "embedding_multiplier": 12.0,
        "logits_scaling": 8.0,
        "residual_multiplier": 0.22,
        "attention_multiplier": 0.015625,
    },
    # q/k norms over whole projections, norms after attention and MLP
    "olmo2": {
        **_SMALL,
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "num_key_value_heads": 2,
    },
    # LayerNorm, partial rotary (a quarter of each head)
    "stablelm": {
        **_SMALL,
        "architectures": ["StableLmForCausalLM"],
        "model_type": "stablelm",
        "num_key_value_heads": 2,
        "partial_rotary_factor": 0.25,
    },
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> local model directory; "llama" is the built-in default."""
    from pdserve.models import builtin_model_path, create_random_model

    root = tmp_path_factory.mktemp("models")
    dirs = {"llama": builtin_model_path(root / "cache")}
    for name, config in TINY_CONFIGS.items():
        dirs[name] = create_random_model(root / name, dict(config), seed=1)
    return dirs
