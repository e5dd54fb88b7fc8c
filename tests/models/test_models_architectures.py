"""Random models of the supported architectures from create_random_model load, report their shape and run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pdserve.models import create_random_model, load_model
from safetensors import safe_open


def _forward(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([loaded.tokenizer.encode("Hello there")])).logits


def test_qwen2_bias_tied_gqa(model_dirs) -> None:
    loaded = load_model(model_dirs["qwen2"])
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert (loaded.num_heads, loaded.num_kv_heads, loaded.head_dim, loaded.vocab_size) == (4, 2, 16, 384)
    attn = loaded.model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.q_proj.bias.abs().sum() > 0
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    with safe_open(str(model_dirs["qwen2"] / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # tied: stored once
    assert _forward(loaded).shape == (1, 11, 384)


def test_qwen3_head_dim_differs_from_hidden_over_heads(model_dirs) -> None:
    loaded = load_model(model_dirs["qwen3"])
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM"
    assert loaded.config.hidden_size // loaded.num_heads == 16
    assert loaded.head_dim == 32
    assert loaded.model.model.layers[0].self_attn.k_proj.out_features == loaded.num_kv_heads * 32
    assert torch.isfinite(_forward(loaded)).all()


def test_mistral_gqa(model_dirs) -> None:
    loaded = load_model(model_dirs["mistral"])
    assert type(loaded.model).__name__ == "MistralForCausalLM"
    assert (loaded.num_heads, loaded.num_kv_heads) == (4, 1)
    assert loaded.max_model_len == 1024
    assert torch.isfinite(_forward(loaded)).all()


def test_sliding_window_caps_max_model_len(tmp_path: Path) -> None:
    config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "sliding_window": 512,
    }
    assert load_model(create_random_model(tmp_path / "m", config)).max_model_len == 512


def test_explicit_eos_is_kept(tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "eos_token_id": 260,
    }
    loaded = load_model(create_random_model(tmp_path / "m", config))
    assert loaded.eos_token_ids == (260,)
    assert loaded.num_kv_heads == 2  # defaults to num_heads


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "llama"},
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
        {"architectures": ["LlamaForCausalLM"], "model_type": "qwen2"},
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100},
    ],
)
def test_create_random_model_rejects_bad_configs(tmp_path: Path, config: dict) -> None:
    with pytest.raises(ValueError):
        create_random_model(tmp_path / "m", config)


@pytest.mark.parametrize(
    ("arch", "rope_scaling", "expected"),
    [
        # frequencies chosen from the longest position in the pass: capped at the original length
        ("phi3", {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}, 1024),
        # dynamic NTK grows past max_position_embeddings only: the context stays below that
        ("llama", {"rope_type": "dynamic", "factor": 2.0}, 4096),
        # static: the whole context
        ("llama", {"rope_type": "linear", "factor": 2.0}, 4096),
    ],
)
def test_position_dependent_rope_caps_max_model_len(
    tmp_path: Path, arch: str, rope_scaling: dict, expected: int
) -> None:
    config = {
        "architectures": ["Phi3ForCausalLM" if arch == "phi3" else "LlamaForCausalLM"],
        "model_type": arch,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 4096,
        "rope_scaling": rope_scaling,
        "pad_token_id": 0,
        **({"original_max_position_embeddings": 1024} if arch == "phi3" else {}),
    }
    assert load_model(create_random_model(tmp_path / "m", config)).max_model_len == expected
