"""A model ready to serve: weights, tokenizer and the facts about them the engine needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(slots=True)
class LoadedModel:
    """What load_model returns. `model` is in eval mode with gradients off, on its device, in `dtype`.

    fingerprint names the config and weights (not the dtype; see fingerprint.py); eos_token_ids are
    the ids that end generation; max_model_len is the longest sequence (prompt + output, tokens)
    the engine may run.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    path: Path
    dtype: torch.dtype
    fingerprint: str
    eos_token_ids: tuple[int, ...]
    max_model_len: int

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        """Query heads per layer."""
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than num_heads under grouped-query attention)."""
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        """Elements per head; Qwen3 and others set it explicitly, differing from hidden_size / num_heads."""
        return int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.num_heads)

    @property
    def vocab_size(self) -> int:
        """Rows of the output logits; may exceed len(tokenizer)."""
        return int(self.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.model.device
