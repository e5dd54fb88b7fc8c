"""The model architectures pdserve serves, and the transformers model_type each one must carry."""

from __future__ import annotations

# transformers picks the model class from config.json's model_type, not from its architectures
# list, so the loader checks that the two agree before trusting either.
#
# Every one is checked token for token against Hugging Face's generate() on a random-weight model
# (tests/engine/test_hf_parity.py). Llama, Mistral, Qwen2 and Qwen3 run pdserve's fused layers;
# the others run transformers' own layers with pdserve's paged attention. Left out on purpose:
# architectures whose attention does more than softmax(QK^T * scale)V over every cached token
# (Gemma 2 and 3: logit soft-capping and per-layer sliding windows; gpt-oss: attention sinks),
# which the paged kernels do not implement and would get silently wrong.
MODEL_TYPE_OF_ARCHITECTURE: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "GemmaForCausalLM": "gemma",
    "GraniteForCausalLM": "granite",
    "Olmo2ForCausalLM": "olmo2",
    "StableLmForCausalLM": "stablelm",
}

SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset(MODEL_TYPE_OF_ARCHITECTURE)
