"""Top alternatives per token (SamplingParams.top_logprobs) against Hugging Face's distribution."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hf_reference import load_hf
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError
from pdserve.sampling_params import MAX_TOP_LOGPROBS

PROMPT = [10, 20, 30, 40, 50, 60, 70]
MAX_NEW = 8
TIE = 1e-3  # alternatives closer than this may come in either order


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"], dtype="float32")


@torch.inference_mode()
def hf_top(model_dir: Path, prompt: list[int], output: list[int], k: int) -> list[tuple[list[int], list[float]]]:
    """(ids, logprobs) of the k most likely tokens at each output position, from one HF forward pass."""
    hf = load_hf(model_dir)
    ids = torch.tensor([prompt + output[:-1]])
    logits = hf(ids).logits[0, len(prompt) - 1 :].float()
    values, top_ids = torch.topk(torch.log_softmax(logits, dim=-1), k, dim=-1)
    return list(zip(top_ids.tolist(), values.tolist(), strict=True))


def test_top_logprobs_match_hf(llm: LLM, model_dirs: dict[str, Path]) -> None:
    k = 5
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, top_logprobs=k)
    assert params.logprobs  # alternatives imply the chosen token's logprob
    out = llm.generate([PROMPT], params)[0]
    assert out.top_logprobs is not None and out.logprobs is not None
    assert len(out.top_logprobs) == len(out.logprobs) == len(out.token_ids) == MAX_NEW
    reference = hf_top(model_dirs["llama"], PROMPT, out.token_ids, k)
    for i, (top, (ref_ids, ref_values)) in enumerate(zip(out.top_logprobs, reference, strict=True)):
        ids, values = list(top), list(top.values())
        assert len(ids) == k
        assert values == sorted(values, reverse=True), f"position {i}: not best first"
        assert values == pytest.approx(ref_values, abs=1e-4), f"position {i}"
        for rank in range(k):
            neighbours = [ref_values[j] for j in (rank - 1, rank + 1) if 0 <= j < k]
            if all(abs(ref_values[rank] - v) > TIE for v in neighbours):
                assert ids[rank] == ref_ids[rank], f"position {i}, rank {rank}"
        # Greedy: the chosen token is the best alternative, with the same logprob.
        assert ids[0] == out.token_ids[i]
        assert values[0] == pytest.approx(out.logprobs[i], abs=1e-6)


def test_each_request_gets_its_own_count_in_one_batch(llm: LLM) -> None:
    greedy = {"max_tokens": MAX_NEW, "temperature": 0.0, "ignore_eos": True}
    five = llm.generate([PROMPT], SamplingParams(**greedy, top_logprobs=5))[0]
    batch = llm.generate(
        [PROMPT, PROMPT, [1, 2, 3], PROMPT],
        [
            SamplingParams(**greedy, top_logprobs=2),
            SamplingParams(**greedy, logprobs=True),
            SamplingParams(**greedy, top_logprobs=MAX_TOP_LOGPROBS),
            SamplingParams(**greedy),
        ],
    )
    two, chosen_only, most, plain = batch
    assert two.top_logprobs is not None and five.top_logprobs is not None
    for i, (top2, top5) in enumerate(zip(two.top_logprobs, five.top_logprobs, strict=True)):
        assert list(top2) == list(top5)[:2], f"position {i}"
        assert list(top2.values()) == pytest.approx(list(top5.values())[:2], abs=1e-4)
    assert chosen_only.top_logprobs is None and chosen_only.logprobs is not None
    assert most.top_logprobs is not None and all(len(t) == MAX_TOP_LOGPROBS for t in most.top_logprobs)
    assert plain.top_logprobs is None and plain.logprobs is None
    assert two.token_ids == chosen_only.token_ids == plain.token_ids == five.token_ids


def test_sampled_tokens_are_scored_on_the_raw_distribution(llm: LLM) -> None:
    """Alternatives are the model's raw distribution, whatever temperature or top-k sampled from."""
    params = SamplingParams(max_tokens=MAX_NEW, temperature=1.5, top_k=3, seed=9, ignore_eos=True, top_logprobs=3)
    out = llm.generate([PROMPT], params)[0]
    assert out.top_logprobs is not None and out.logprobs is not None
    for token, logprob, top in zip(out.token_ids, out.logprobs, out.top_logprobs, strict=True):
        assert token in top  # top-k 3 samples among the three most likely
        assert top[token] == pytest.approx(logprob, abs=1e-6)
        assert math.fsum(math.exp(v) for v in top.values()) <= 1.0 + 1e-6


def test_vllm_count_spelling(llm: LLM) -> None:
    """vLLM's `logprobs=k` asks for k alternatives; 0 for the chosen token's logprob only."""
    assert SamplingParams(logprobs=3).top_logprobs == 3 and SamplingParams(logprobs=3).logprobs is True
    assert SamplingParams(logprobs=0).top_logprobs == 0 and SamplingParams(logprobs=0).logprobs is True
    assert SamplingParams(logprobs=2, top_logprobs=2).top_logprobs == 2
    out = llm.generate([PROMPT], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, logprobs=1))[0]
    assert out.top_logprobs is not None and [list(t) for t in out.top_logprobs] == [[t] for t in out.token_ids]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_logprobs": MAX_TOP_LOGPROBS + 1},
        {"top_logprobs": -1},
        {"top_logprobs": True},
        {"top_logprobs": "3"},
        {"top_logprobs": None},
        {"logprobs": MAX_TOP_LOGPROBS + 1},
        {"logprobs": 2, "top_logprobs": 3},
    ],
)
def test_bad_counts(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match="logprobs"):
        SamplingParams(**kwargs)  # type: ignore[arg-type]
