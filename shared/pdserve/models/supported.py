"""The model architectures pdserve serves, and the transformers model_type each one must carry."""

from __future__ import annotations

# transformers picks the model class from config.json's model_type, not from its architectures
# list, so the loader checks that the two agree before trusting either.
MODEL_TYPE_OF_ARCHITECTURE: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset(MODEL_TYPE_OF_ARCHITECTURE)
