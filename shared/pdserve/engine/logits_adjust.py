"""Penalties and logit bias: what a request changes about the distribution it samples from.

Applied to a float32 copy of the logits of the rows that ask (most ask for nothing and pay
nothing), all such rows of a step at once: a handful of tensor ops per step rather than per row
(per row, 32 rows cost more than the tiny model's whole decode step). The order is vLLM's:
repetition penalty over prompt and output tokens, then frequency and presence penalties over
output tokens, then the logit bias, then allowed_token_ids; last, the tokens a row may not sample yet (its stop tokens
under min_tokens) are ruled out. Logprobs are taken from the raw logits, not from these.
"""

from __future__ import annotations

from array import array

import torch

from pdserve.sampling_params import SamplingParams


def _int64(values: list[int], device: torch.device) -> torch.Tensor:
    # Through an array: torch.tensor() of a Python list takes ~25 ns per element, which for a
    # batch of histories cost more than the rest of the step.
    return (
        torch.frombuffer(array("q", values), dtype=torch.int64).to(device)
        if values
        else torch.empty(0, dtype=torch.int64, device=device)
    )


def adjust_logits(
    logits: torch.Tensor,
    params: list[SamplingParams],
    histories: list[tuple[list[int], int]],
    suppressed: list[list[int]],
) -> torch.Tensor:
    """`logits` [R, vocab] float32 (not modified) after each row's penalties and bias, with the
    ids in suppressed[r] ruled out (-inf). histories[r] is row r's prompt then output token ids,
    and its prompt length."""
    adjusted = logits.clone()
    rows, vocab = adjusted.shape
    device, dtype = adjusted.device, adjusted.dtype

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

    repeat_rows = [r for r, p in enumerate(params) if p.repetition_penalty != 1.0]
    if repeat_rows:
        row_index: list[int] = []
        token_index: list[int] = []
        for r in repeat_rows:
            ids = histories[r][0]
            row_index += [r] * len(ids)
            token_index += ids
        seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        seen[_int64(row_index, device), _int64(token_index, device)] = True
        penalty = column([p.repetition_penalty for p in params])
        adjusted = torch.where(seen, torch.where(adjusted > 0, adjusted / penalty, adjusted * penalty), adjusted)
    count_rows = [r for r, p in enumerate(params) if p.frequency_penalty or p.presence_penalty]
    if count_rows:
        row_index, token_index = [], []
        for r in count_rows:
            ids, num_prompt = histories[r]
            row_index += [r] * (len(ids) - num_prompt)
            token_index += ids[num_prompt:]
        if token_index:
            counts = torch.zeros(rows, vocab, dtype=dtype, device=device)
            where = (_int64(row_index, device), _int64(token_index, device))
            counts.index_put_(where, torch.ones(len(token_index), dtype=dtype, device=device), accumulate=True)
            frequency = column([p.frequency_penalty for p in params])
            presence = column([p.presence_penalty for p in params])
            adjusted -= frequency * counts + presence * (counts > 0).to(dtype)
    bias_rows = [r for r, p in enumerate(params) if p.logit_bias]
    if bias_rows:
        row_index, token_index, values = [], [], []
        for r in bias_rows:
            bias = params[r].logit_bias
            row_index += [r] * len(bias)
            token_index += list(bias)
            values += list(bias.values())
        where = (_int64(row_index, device), _int64(token_index, device))
        biases = torch.frombuffer(array("f", values), dtype=torch.float32).to(device=device, dtype=dtype)
        adjusted.index_put_(where, biases, accumulate=True)
    for r, p in enumerate(params):
        if p.allowed_token_ids is not None:  # few rows ask; one masked copy each
            allowed = _int64(p.allowed_token_ids, device)
            kept = torch.full_like(adjusted[r], float("-inf"))
            kept[allowed] = adjusted[r, allowed]
            adjusted[r] = kept
    suppressed_rows = [r for r, ids in enumerate(suppressed) if ids]
    if suppressed_rows:
        row_index = [r for r in suppressed_rows for _ in suppressed[r]]
        token_index = [t for r in suppressed_rows for t in suppressed[r]]
        adjusted[_int64(row_index, device), _int64(token_index, device)] = float("-inf")
    return adjusted
