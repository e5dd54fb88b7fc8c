"""Turns logits into next tokens: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdserve.sampling_params import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15  # splits one request seed into independent per-step seeds


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # per row, None where no row asked for them


def step_seed(seed: int, step: int) -> int:
    """The generator seed for output token `step` of a seeded request. Depends on nothing
    else, so the same seed gives the same tokens in any batch and on any worker."""
    return (seed * _SEED_MIX + step * 0x632BE59BD9B4E019 + 1) & 0x7FFF_FFFF_FFFF_FFFF


class Sampler:
    def __init__(self, device: torch.device, seed: int | None = None) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor, params: list[SamplingParams], steps: list[int]) -> SampleResult:
        """logits float32 [N, vocab]; steps[i] is how many tokens row i has generated so far."""
        tokens = torch.argmax(logits, dim=-1)
        for row, p in enumerate(params):
            if not p.greedy:
                tokens[row] = self._sample_row(logits[row], p, steps[row])
        token_list = tokens.tolist()
        logprobs: list[float] | None = None
        if any(p.logprobs for p in params):
            all_logprobs = torch.log_softmax(logits, dim=-1)
            logprobs = all_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        return SampleResult(token_list, logprobs)

    def _sample_row(self, logits: torch.Tensor, p: SamplingParams, step: int) -> int:
        scaled = logits / p.temperature
        if 0 < p.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            # Drop a token once the ones before it already cover top_p; the first always stays.
            drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p.top_p
            drop[0] = False  # explicit: with a tiny top_p, rounding must not drop every token
            scaled = scaled.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(scaled, dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
            # Degenerate values (overflow at an extreme temperature): the most likely token,
            # rather than failing the whole batch's step.
            return int(torch.argmax(logits).item())
        generator = self.generator
        if p.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(step_seed(p.seed, step))
        return int(torch.multinomial(probs, 1, generator=generator).item())
