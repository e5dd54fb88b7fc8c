"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"], max_model_len=256)


@pytest.mark.parametrize("max_tokens", [0, -3, 1.5, True, "16"])
def test_max_tokens_must_be_positive(max_tokens: object) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        SamplingParams(max_tokens=max_tokens)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": float("nan")}, "min_p"),
        ({"min_p": "0.1"}, "min_p"),
        ({"stop": [""]}, "stop"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_bad_sampling_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_prompt_longer_than_context(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="context is 256 tokens"):
        llm.generate([[i % 200 for i in range(300)]], SamplingParams(max_tokens=4))
    assert llm.engine.kv_blocks_used == 0 and not llm.engine.requests


def test_token_ids_outside_vocabulary(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate([[1, 2, 10**6]], SamplingParams(max_tokens=4))
    # Each bad id is named, wherever it sits in a long prompt.
    for bad in (-1, True, 2.5, "7"):
        prompt: list[object] = [*range(1, 200), bad, 3]
        with pytest.raises(InvalidRequestError, match=f"token id {bad!r} is outside"):
            llm.generate([prompt], SamplingParams(max_tokens=4))  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([""], SamplingParams(max_tokens=4))


def test_generation_stops_at_context_end(llm: LLM) -> None:
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    out = llm.generate([[i % 200 for i in range(250)]], params)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 6
