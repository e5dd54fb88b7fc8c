"""Penalties and logit bias, against Hugging Face's generate() with the same rules as its logits
processors (its own for repetition_penalty; OpenAI's formula for presence and frequency)."""

from __future__ import annotations

import pytest
import torch
from hf_reference import assert_matches, hf_greedy
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError
from transformers import LogitsProcessor, LogitsProcessorList

PROMPTS = [[10, 20, 30, 40, 50, 60, 70], list(range(100, 160)), [7, 7, 7, 7]]
MAX_NEW = 24


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the generated tokens, as a reference."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.bincount(input_ids[0, self.prompt_len :], minlength=scores.shape[-1])[: scores.shape[-1]]
        return scores - self.frequency * counts - self.presence * (counts > 0).float()  # type: ignore[return-value]


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_matches_hf(llm: LLM, hf: torch.nn.Module, penalty: float) -> None:
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, repetition_penalty=penalty)
    compared = 0
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
        compared += assert_matches(out.token_ids, hf_greedy(hf, prompt, MAX_NEW, repetition_penalty=penalty))
    assert compared >= len(PROMPTS) * MAX_NEW // 2
    plain = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True))
    assert [o.token_ids for o in plain] != [o.token_ids for o in llm.generate(PROMPTS, params)]  # it did something


@pytest.mark.parametrize(("presence", "frequency"), [(1.5, 0.0), (0.0, 0.7), (0.5, 0.5), (-1.0, 0.0)])
def test_presence_and_frequency_penalties_match_openais_formula(
    llm: LLM, hf: torch.nn.Module, presence: float, frequency: float
) -> None:
    params = SamplingParams(
        max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, presence_penalty=presence, frequency_penalty=frequency
    )
    compared = 0
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
        processors = LogitsProcessorList([OpenAIPenalties(len(prompt), presence, frequency)])
        compared += assert_matches(out.token_ids, hf_greedy(hf, prompt, MAX_NEW, logits_processor=processors))
    assert compared >= len(PROMPTS) * MAX_NEW // 2


def test_logit_bias_steers_greedy_and_logprobs_stay_raw(llm: LLM) -> None:
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True)
    plain = llm.generate([PROMPTS[0]], greedy)[0]
    forced = llm.generate(
        [PROMPTS[0]],
        SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True, logit_bias={42: 100}),
    )[0]
    assert forced.token_ids == [42] * 6
    assert forced.logprobs is not None and all(lp < -0.01 for lp in forced.logprobs)  # raw, not the biased ~0
    banned = llm.generate(
        [PROMPTS[0]],
        SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logit_bias={t: -100 for t in plain.token_ids}),
    )[0]
    assert not set(banned.token_ids) & set(plain.token_ids)
    # Keys as decimal strings (JSON's and the wire's spelling) mean the same ids.
    assert SamplingParams(logit_bias={"42": 5}).logit_bias == {42: 5.0}


def test_sampled_requests_with_penalties_stay_reproducible_in_any_batch(llm: LLM) -> None:
    params = SamplingParams(
        max_tokens=16, temperature=1.0, seed=11, ignore_eos=True, presence_penalty=0.8, repetition_penalty=1.2
    )
    alone = llm.generate([PROMPTS[1]], params)[0].token_ids
    mixed = llm.generate(
        PROMPTS, [SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True), params, SamplingParams(max_tokens=5)]
    )
    assert mixed[1].token_ids == alone


def test_unknown_token_in_logit_bias_is_refused(llm: LLM) -> None:
    vocab = llm.engine.loaded.vocab_size
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2, logit_bias={vocab: 1.0}))
    assert not llm.engine.requests


@pytest.mark.parametrize(
    "kwargs",
    [
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"frequency_penalty": "1"},
        {"repetition_penalty": 0},
        {"repetition_penalty": 101},
        {"repetition_penalty": True},
        {"logit_bias": {1: 101}},
        {"logit_bias": {-1: 1}},
        {"logit_bias": {"x": 1}},
        {"logit_bias": {i: 1 for i in range(1025)}},
        {"logit_bias": [1, 2]},
    ],
)
def test_bad_adjustments(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_min_tokens_holds_back_eos_stop_tokens_and_stop_strings(llm: LLM) -> None:
    eos = llm.engine.stop_checker.eos_token_ids
    assert eos
    eager = {t: 100.0 for t in eos}  # eos is all but certain at every step
    quick = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0.0, logit_bias=eager))[0]
    assert len(quick.token_ids) == 1 and quick.finish_reason == "stop"
    held = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=20, temperature=0.0, logit_bias=eager, min_tokens=5))[0]
    # vLLM's rule: min_tokens tokens that are not stop tokens, then the stop token may come.
    assert len(held.token_ids) == 6 and held.finish_reason == "stop"
    assert not set(held.token_ids[:5]) & eos and held.token_ids[5] in eos
    # A stop token id, sampled: the same rule, whatever the batch.
    stop_id = 65
    params = SamplingParams(
        max_tokens=20, temperature=1.0, seed=3, logit_bias={stop_id: 100.0}, stop_token_ids=[stop_id], min_tokens=3
    )
    out = llm.generate([PROMPTS[1], PROMPTS[0]], [SamplingParams(max_tokens=4), params])[1]
    assert len(out.token_ids) == 4 and out.token_ids[-1] == stop_id and stop_id not in out.token_ids[:3]


def test_min_tokens_lets_an_early_stop_string_through(llm: LLM) -> None:
    greedy = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    text = llm.generate([PROMPTS[0]], SamplingParams(**greedy))[0].text
    stop = text[1:3]  # occurs within the first tokens
    assert llm.generate([PROMPTS[0]], SamplingParams(**greedy, stop=[stop]))[0].text == text[: text.find(stop)]
    late = llm.generate([PROMPTS[0]], SamplingParams(**greedy, stop=[stop], min_tokens=8))[0]
    assert late.text.startswith(text[: text.find(stop) + len(stop)])  # the early match was let through
    later = text.find(stop, len(llm.tokenizer.decode(late.token_ids[:7])) - len(stop) + 1)
    assert late.text == (text[:later] if later >= 0 else text)


def test_min_tokens_must_not_exceed_max_tokens() -> None:
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(min_tokens=-1)


def test_a_bad_logit_bias_in_any_prompt_fails_the_call_before_anything_runs(llm: LLM) -> None:
    vocab = llm.engine.loaded.vocab_size
    good = SamplingParams(max_tokens=2)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate(PROMPTS[:2], [good, SamplingParams(max_tokens=2, logit_bias={vocab + 5: 1.0})])
    assert not llm.engine.requests  # the first prompt was never queued
