"""Penalties and logit bias: what a request changes about the distribution it samples from.

Applied per row, to a float32 copy of the row's logits, only for requests that ask (most ask
for nothing and pay nothing). The order is vLLM's: repetition penalty over prompt and output
tokens, then frequency and presence penalties over output tokens, then the logit bias.
Logprobs are taken from the raw logits, not from these.
"""

from __future__ import annotations

import torch

from pdserve.sampling_params import SamplingParams


def adjust_logits(logits: torch.Tensor, params: SamplingParams, token_ids: list[int], num_prompt: int) -> torch.Tensor:
    """The row's logits (float32 [vocab], not modified) after `params`' penalties and bias;
    `token_ids` are the request's prompt then output tokens, the first `num_prompt` the prompt."""
    adjusted = logits.clone()
    vocab = adjusted.shape[-1]
    if params.repetition_penalty != 1.0 and token_ids:
        seen = torch.tensor(sorted(set(token_ids)), dtype=torch.int64, device=adjusted.device)
        values = adjusted[seen]
        rp = params.repetition_penalty
        adjusted[seen] = torch.where(values > 0, values / rp, values * rp)
    if (params.frequency_penalty or params.presence_penalty) and len(token_ids) > num_prompt:
        output = torch.tensor(token_ids[num_prompt:], dtype=torch.int64, device=adjusted.device)
        counts = torch.bincount(output, minlength=vocab)[:vocab].to(adjusted.dtype)
        adjusted -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(adjusted.dtype)
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.int64, device=adjusted.device)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=adjusted.dtype, device=adjusted.device)
        adjusted.index_add_(0, ids, bias)
    return adjusted
