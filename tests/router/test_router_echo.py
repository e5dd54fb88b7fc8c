"""Completions `echo`: the prompt comes back ahead of the completion, scored when logprobs are asked
for, as lm-evaluation-harness and other scoring clients use it (echo, logprobs, temperature 0)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pdserve import LLM, SamplingParams
from pdserve.protocol import top_logprobs
from router_helpers import MODEL, sse_data, streamed_text

PROMPT = "The quick brown fox jumps over the lazy dog"


async def complete(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def stream(client: httpx.AsyncClient, **body: Any) -> list[Any]:
    """The data events of a streamed completion, `[DONE]` left out."""
    response = await client.post("/v1/completions", json={"model": MODEL, "temperature": 0, "stream": True, **body})
    assert response.status_code == 200, response.text
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    return events[:-1]


async def test_echo_puts_the_prompt_ahead_of_the_text(client: httpx.AsyncClient) -> None:
    plain = await complete(client, prompt=PROMPT, max_tokens=5, ignore_eos=True)
    echoed = await complete(client, prompt=PROMPT, max_tokens=5, ignore_eos=True, echo=True)
    assert echoed["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    # The echo is not generated: the token counts are unchanged (the repeat's prompt came from the cache).
    assert [echoed["usage"][k] for k in ("prompt_tokens", "completion_tokens")] == [
        plain["usage"][k] for k in ("prompt_tokens", "completion_tokens")
    ]
    events = await stream(client, prompt=PROMPT, max_tokens=5, ignore_eos=True, echo=True)
    assert streamed_text(events) == echoed["choices"][0]["text"]


async def test_echoed_prompt_is_scored_like_the_engine_scores_it(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    body = await complete(client, prompt=PROMPT, max_tokens=3, ignore_eos=True, echo=True, logprobs=2)
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    prompt_ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    expected = reference_llm.generate(
        [prompt_ids], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, prompt_logprobs=2, logprobs=2)
    )[0]
    n = len(prompt_ids)
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == n + 3
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:n] == pytest.approx(expected.prompt_logprobs[1:], abs=1e-4)
    assert logprobs["token_logprobs"][n:] == pytest.approx(expected.logprobs, abs=1e-4)
    assert all(1 <= len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    # Offsets: the prompt's from 0, the completion's from the end of the prompt text, never past the text.
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(choice["text"])
    assert offsets[n] == len(PROMPT)

    events = [
        e
        for e in await stream(client, prompt=PROMPT, max_tokens=3, ignore_eos=True, echo=True, logprobs=2)
        if e["choices"]
    ]
    streamed: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for event in events:
        for key in streamed:
            streamed[key] += event["choices"][0]["logprobs"][key]
    assert streamed["tokens"] == logprobs["tokens"] and streamed["text_offset"] == offsets
    assert streamed["token_logprobs"][0] is None
    assert streamed["token_logprobs"][1:] == pytest.approx(logprobs["token_logprobs"][1:], abs=1e-4)


async def test_loglikelihood_the_way_lm_eval_asks(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    """lm-eval's local-completions: context + continuation, echo, max_tokens 1, logprobs 1; the
    continuation's logprob is the sum of its tokens' entries, and greedy when each is the top one."""
    context, continuation = "Paris is the capital of", " France"
    ctx_ids = reference_llm.tokenizer(context)["input_ids"]
    full_ids = reference_llm.tokenizer(context + continuation)["input_ids"]
    body = await complete(client, prompt=full_ids, max_tokens=1, echo=True, logprobs=1)
    logprobs = body["choices"][0]["logprobs"]
    scored = reference_llm.generate([full_ids], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1))[0]
    assert scored.prompt_logprobs is not None
    span = slice(len(ctx_ids), len(full_ids))
    assert sum(logprobs["token_logprobs"][span]) == pytest.approx(sum(scored.prompt_logprobs[span]), abs=1e-3)
    top_texts = [next(iter(top)) for top in logprobs["top_logprobs"][span]]
    assert len(top_texts) == len(full_ids) - len(ctx_ids) and all(isinstance(t, str) for t in top_texts)
    # Token-id prompts echo their decoded text.
    assert body["choices"][0]["text"].startswith(reference_llm.tokenizer.decode(full_ids, skip_special_tokens=True))


async def test_each_choice_echoes_its_own_prompt(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt=["one", "two three"], n=2, max_tokens=2, echo=True, logprobs=0)
    by_index = {c["index"]: c for c in body["choices"]}
    for index, prompt in [(0, "one"), (1, "one"), (2, "two three"), (3, "two three")]:
        assert by_index[index]["text"].startswith(prompt)
        assert by_index[index]["logprobs"]["token_logprobs"][0] is None
        assert by_index[index]["logprobs"]["top_logprobs"] is None  # logprobs 0: no alternatives


async def test_too_many_prompt_scores_is_a_clear_400(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit (60,000 values, under nats-server's 1 MB payload) is beyond the tiny model's
    # 2048-token context even at 20 alternatives; a lower one exercises the same check.
    monkeypatch.setattr(top_logprobs, "MAX_PROMPT_LOGPROB_VALUES", 10_000)
    prompt = [5] * 1500
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 20}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "logprobs" and "limit" in error["message"]
    # The same prompt with fewer alternatives fits.
    ok = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1}
    )
    assert ok.status_code == 200, ok.text


async def test_max_tokens_zero_returns_the_prompt_alone(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    """OpenAI's and vLLM's way to score a prompt: echo with max_tokens 0 generates nothing."""
    prompt_ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    body = await complete(client, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, return_token_ids=True)
    choice = body["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert choice["token_ids"] == [] and choice["prompt_token_ids"] == prompt_ids
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(prompt_ids)
    assert logprobs["token_logprobs"][0] is None and all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] == len(prompt_ids)

    events = await stream(
        client, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, stream_options={"include_usage": True}
    )
    assert streamed_text(events) == PROMPT
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length"] and events[-1]["usage"]["completion_tokens"] == 0
    streamed_tokens = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
    assert streamed_tokens == logprobs["tokens"]

    refused = await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


async def test_streamed_choices_each_echo_their_prompt_once(client: httpx.AsyncClient) -> None:
    body = {"prompt": ["one", "two three"], "n": 2, "max_tokens": 4, "ignore_eos": True, "echo": True, "logprobs": 1}
    whole = {c["index"]: c for c in (await complete(client, **body))["choices"]}
    events = await stream(client, **body)
    for index in range(4):
        assert streamed_text(events, index) == whole[index]["text"]
        tokens = [
            t
            for e in events
            for c in e["choices"]
            if c["index"] == index and c["logprobs"]
            for t in c["logprobs"]["tokens"]
        ]
        assert tokens == whole[index]["logprobs"]["tokens"]  # the prompt's tokens once, then the completion's
