"""Turns logits into next tokens: greedy, temperature, top-k, top-p, min-p, per-request seeds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pdserve.engine.grammar_constraint import GrammarConstraint
from pdserve.engine.logits_adjust import adjust_logits
from pdserve.kernels import BACKEND_ENV, cpu_layer_ops
from pdserve.sampling_params import SamplingParams

Constraint = Callable[[int], bool]  # which token ids a row may take next

_SEED_MIX = 0x9E3779B97F4A7C15  # splits one request seed into independent per-step seeds


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # per row, None where no row asked for them
    # per row, the row's top_logprobs most likely tokens (id -> logprob, best first); None where
    # no row asked for alternatives
    top_logprobs: list[dict[int, float]] | None = None


# Prompt positions put through lm_head at once when scoring a prompt: bounds the float32 logits
# held at a time (256 x a 152k vocabulary is 156 MB) whatever the chunk size.
PROMPT_SCORE_ROWS = 256


@torch.inference_mode()
def score_prompt(
    lm_head: torch.nn.Module, hidden: torch.Tensor, targets: list[int], k: int
) -> tuple[list[float], list[dict[int, float]], list[int]]:
    """Logprob of each target (row i's next prompt token) under row i's raw distribution, the
    k most likely tokens there (id -> logprob, best first; empty dicts for k = 0), and the
    target's rank: how many tokens are at least as likely, itself included (vLLM's rank, 1 for
    the most likely)."""
    logprobs: list[float] = []
    tops: list[dict[int, float]] = []
    ranks: list[int] = []
    target_ids = torch.tensor(targets, dtype=torch.int64, device=hidden.device)
    for start in range(0, hidden.shape[0], PROMPT_SCORE_ROWS):
        rows = slice(start, start + PROMPT_SCORE_ROWS)
        all_logprobs = torch.log_softmax(lm_head(hidden[rows]).float(), dim=-1)
        chosen = all_logprobs.gather(1, target_ids[rows].unsqueeze(1))
        logprobs += chosen.squeeze(1).tolist()
        ranks += (all_logprobs >= chosen).sum(dim=-1).tolist()
        if k > 0:
            values, ids = torch.topk(all_logprobs, min(k, all_logprobs.shape[-1]), dim=-1)
            tops += [dict(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            tops += [{} for _ in range(all_logprobs.shape[0])]
    return logprobs, tops, ranks


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

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        steps: list[int],
        histories: list[tuple[list[int], int]] | None = None,
        suppressed: list[list[int]] | None = None,
        constraints: list[Constraint | None] | None = None,
    ) -> SampleResult:
        """logits [N, vocab] in the model's dtype; steps[i] is how many tokens row i has generated so far.
        histories[i] is row i's (prompt then output token ids, prompt length), read only for rows
        whose params adjust the logits (penalties, logit bias); suppressed[i] are token ids row i
        may not sample (its stop tokens while under min_tokens). With neither given, no row's
        logits are adjusted. constraints[i], when set, says which tokens row i may take (JSON mode):
        the row takes the best (greedy) or a sampled allowed token.

        Random sampling and logprobs work on a float32 copy, made only when a row needs one: for an
        all-greedy bf16 batch, copying 64 x 32000 logits and taking torch's argmax of them cost about a
        millisecond of each decode step, where greedy_tokens reads the bf16 values in place."""
        tokens = greedy_tokens(logits)
        adjusting = (
            [row for row, p in enumerate(params) if p.adjusts_logits or (suppressed is not None and suppressed[row])]
            if histories is not None or suppressed is not None
            else []  # the caller found no row that adjusts: no per-row scan
        )
        needs_float = bool(adjusting) or any(not p.greedy or p.logprobs for p in params)
        full = logits.float() if needs_float else logits
        adjusted = {}  # row -> its adjusted logits, for rows with penalties, a logit bias or suppressed tokens
        if adjusting:
            if histories is None and any(params[r].adjusts_logits for r in adjusting):
                raise ValueError("penalties and logit_bias need the rows' token histories")
            index = torch.tensor(adjusting, device=full.device)
            rows = adjust_logits(
                full.index_select(0, index),
                [params[r] for r in adjusting],
                [histories[r] if histories is not None else ([], 0) for r in adjusting],
                [suppressed[r] if suppressed is not None else [] for r in adjusting],
            )
            tokens[index] = torch.argmax(rows, dim=-1)  # greedy rows keep these; sampled rows sample below
            adjusted = dict(zip(adjusting, rows, strict=True))
        for row, p in enumerate(params):
            allowed = constraints[row] if constraints is not None else None
            if allowed is not None and p.greedy:
                tokens[row] = best_allowed(adjusted.get(row, full[row]), allowed)
            elif not p.greedy:
                tokens[row] = self._sample_row(adjusted.get(row, full[row]), p, steps[row], allowed)
        token_list = tokens.tolist()
        logprobs: list[float] | None = None
        top: list[dict[int, float]] | None = None
        if any(p.logprobs for p in params):
            all_logprobs = torch.log_softmax(full, dim=-1)
            logprobs = all_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
            k = min(max(p.top_logprobs for p in params), all_logprobs.shape[-1])
            if k > 0:
                # One topk for the batch at the largest k asked for; each row keeps its own count.
                values, ids = torch.topk(all_logprobs, k, dim=-1)
                top = [
                    dict(zip(row_ids[: p.top_logprobs], row_values[: p.top_logprobs], strict=True))
                    for p, row_ids, row_values in zip(params, ids.tolist(), values.tolist(), strict=True)
                ]
        return SampleResult(token_list, logprobs, top)

    def _sample_row(self, logits: torch.Tensor, p: SamplingParams, step: int, allowed: Constraint | None = None) -> int:
        scaled = warp_logits(logits / p.temperature, p.top_k, p.top_p, p.min_p)
        probs = torch.softmax(scaled, dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
            # Degenerate values (overflow at an extreme temperature): the most likely token,
            # rather than failing the whole batch's step.
            return best_allowed(logits, allowed) if allowed is not None else int(torch.argmax(logits).item())
        generator = self.generator
        if p.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(step_seed(p.seed, step))
        if allowed is not None:
            return _draw_allowed(probs, logits, allowed, generator)
        return int(torch.multinomial(probs, 1, generator=generator).item())


def warp_logits(scaled: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Temperature-scaled logits [vocab] with the tokens top-k, top-p and min-p rule out set to
    -inf, in Hugging Face's order (its TopK, TopP and MinP logits warpers). The most likely
    token always stays."""
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the ones before it already cover top_p; the first always stays.
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop[0] = False  # explicit: with a tiny top_p, rounding must not drop every token
        scaled = scaled.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    if min_p > 0.0:
        probs = torch.softmax(scaled, dim=-1)
        # The most likely token has probs.max() >= min_p * probs.max(), so it always stays.
        scaled = scaled.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return scaled


# Candidates checked against a constraint before sampling among those allowed: the most likely
# ones carry nearly all the probability, and each check feeds a token's text to the grammar.
CONSTRAINED_CANDIDATES = 64


def best_allowed(logits: torch.Tensor, allowed: Constraint) -> int:
    """The most likely token (logits [vocab]) that `allowed` accepts; the most likely of all if none is."""
    # Usually among the first few: sort the whole vocabulary only when they are all refused.
    first = torch.topk(logits, min(CONSTRAINED_CANDIDATES, logits.shape[-1])).indices.tolist()
    found = next((t for t in first if allowed(t)), None)
    if found is not None:
        return found
    if isinstance(allowed, GrammarConstraint):  # the state's mask: found once, then cached
        mask = allowed.allowed_mask().to(logits.device)
        if not bool(mask.any()):  # a dead end: nothing is allowed (docs/engine.md)
            return int(torch.argmax(logits).item())
        return int(torch.argmax(logits.masked_fill(~mask, float("-inf"))).item())
    order = torch.argsort(logits, descending=True).tolist()
    return next((t for t in order[len(first) :] if allowed(t)), order[0])


# Draws tried before a constrained row restricts its distribution to the allowed candidates
# outright: a model that writes the format anyway needs one draw and one check.
CONSTRAINED_DRAWS = 4


def _draw_allowed(probs: torch.Tensor, logits: torch.Tensor, allowed: Constraint, generator: torch.Generator) -> int:
    """A token drawn from `probs` restricted to what `allowed` accepts (rejection first: a refused
    draw is ruled out and the rest renormalized, which is sampling from the restriction)."""
    # `probs` is the caller's own (made for this row and dropped after), so it is zeroed in place.
    for _ in range(CONSTRAINED_DRAWS):
        token = int(torch.multinomial(probs, 1, generator=generator).item())
        if allowed(token):
            return token
        probs[token] = 0.0
        if float(probs.sum()) <= 0.0:
            return best_allowed(logits, allowed)
    restricted = _restrict(probs, allowed)
    if restricted is None and isinstance(allowed, GrammarConstraint):
        # None of the likely candidates is allowed: the distribution on the whole allowed set.
        restricted = probs.masked_fill(~allowed.allowed_mask().to(probs.device), 0.0)
        if not float(restricted.sum()) > 0.0:  # what top-k / top-p kept is all refused
            return best_allowed(logits, allowed)
    if restricted is None:  # nothing the filters kept is allowed: the best allowed token
        return best_allowed(logits, allowed)
    return int(torch.multinomial(restricted, 1, generator=generator).item())


def _restrict(probs: torch.Tensor, allowed: Constraint) -> torch.Tensor | None:
    """`probs` kept on the allowed ones among its most likely candidates; None if none is allowed."""
    count = min(CONSTRAINED_CANDIDATES, int((probs > 0).sum()))
    candidates = torch.topk(probs, count).indices.tolist()
    keep = [t for t in candidates if allowed(t)]
    if not keep:
        return None
    index = torch.tensor(keep, device=probs.device)
    restricted = torch.zeros_like(probs)
    restricted[index] = probs[index]
    return restricted


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """argmax of each row of logits [N, vocab] as float32 values (first index of the maximum), int64 [N]."""
    native = (
        logits.dtype == torch.bfloat16
        and logits.device.type == "cpu"
        and logits.stride(-1) == 1
        and os.environ.get(BACKEND_ENV) != "torch"
        and cpu_layer_ops.available()
    )
    if native:
        return cpu_layer_ops.argmax_rows(logits)
    return torch.argmax(logits.float(), dim=-1)
