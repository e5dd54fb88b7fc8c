"""The fields vLLM's offline outputs have that scripts read: `stop_reason` (the stop string or
stop token id that ended the output, None otherwise), `cumulative_logprob`, `prompt`, and
`LLM.get_tokenizer()`. Real engine, built-in model."""

from __future__ import annotations

import pytest
from pdserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(dtype="float32", num_kv_blocks=128)


def greedy(**fields: object) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 24, "temperature": 0.0, "ignore_eos": True, **fields})  # type: ignore[arg-type]


def test_stop_reason_names_what_stopped_the_output(llm: LLM) -> None:
    plain = llm.generate("Hello", greedy())[0]
    assert plain.finish_reason == "length" and plain.stop_reason is None
    stop_string = plain.text[5:8]
    by_string = llm.generate("Hello", greedy(stop=["\u2603\u2603", stop_string]))[0]
    assert by_string.finish_reason == "stop" and by_string.stop_reason == stop_string
    stop_token = plain.token_ids[6]
    by_token = llm.generate("Hello", greedy(stop_token_ids=[stop_token]))[0]
    first = plain.token_ids.index(stop_token)
    assert by_token.finish_reason == "stop" and by_token.stop_reason == stop_token
    assert by_token.token_ids == plain.token_ids[: first + 1]


def test_cumulative_logprob_prompt_and_tokenizer(llm: LLM) -> None:
    scored = llm.generate("Hello", greedy(max_tokens=5, logprobs=True))[0]
    assert scored.logprobs is not None
    assert scored.cumulative_logprob == pytest.approx(sum(scored.logprobs))
    assert llm.generate("Hello", greedy(max_tokens=2))[0].cumulative_logprob is None
    assert scored.prompt == "Hello"
    assert llm.generate([[72, 105]], greedy(max_tokens=2))[0].prompt is None  # token ids: no text
    many = llm.generate("Hi", greedy(max_tokens=2, n=2))[0]
    assert [o.prompt for o in many.outputs] == ["Hi", "Hi"]
    chat = llm.chat([{"role": "user", "content": "hi there"}], greedy(max_tokens=2))[0]
    tokenizer = llm.get_tokenizer()
    assert tokenizer is llm.tokenizer
    assert chat.prompt is not None and "hi there" in chat.prompt
    assert tokenizer.encode(chat.prompt, add_special_tokens=False) == chat.prompt_token_ids
