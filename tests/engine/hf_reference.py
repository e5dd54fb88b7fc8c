"""Hugging Face greedy generation, the correctness oracle, with the near-tie positions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

NEAR_TIE = 1e-3


@dataclass
class Reference:
    tokens: list[int]
    top2_gaps: list[float]


def load_hf(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    # The comparison runs with ignore_eos; generate() merges the model's own eos back in otherwise.
    model.generation_config.eos_token_id = None
    return model.eval()


@torch.inference_mode()
def hf_greedy(
    model: torch.nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    logits_processor: object = None,
    **generation: object,
) -> Reference:
    """Greedy tokens; `generation` (repetition_penalty=...) and `logits_processor` change the
    scores chosen from, and the near-tie gaps are then measured on those scores."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
        **generation,
    )
    ids = torch.tensor([prompt])
    # An explicit mask: generate() would otherwise mask every prompt token equal to pad_token_id.
    out = model.generate(  # type: ignore[operator]
        ids, attention_mask=torch.ones_like(ids), generation_config=config, logits_processor=logits_processor
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    gaps = []
    for logits in out.scores if (generation or logits_processor) else out.logits:
        top2 = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top2[0] - top2[1]))
    return Reference(tokens, gaps)


def assert_matches(ours: list[int], ref: Reference, label: str = "") -> int:
    """Compare position by position up to the first near-tie; return positions compared."""
    for i, (a, b) in enumerate(zip(ours, ref.tokens, strict=False)):
        if ref.top2_gaps[i] < NEAR_TIE:
            return i
        assert a == b, f"{label}: token {i} differs: ours {ours[: i + 1]} reference {ref.tokens[: i + 1]}"
    assert len(ours) == len(ref.tokens), f"{label}: {len(ours)} tokens, reference {len(ref.tokens)}"
    return len(ours)
