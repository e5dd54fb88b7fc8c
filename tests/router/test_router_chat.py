"""POST /v1/chat/completions against a real engine (LocalBackend, built-in tiny model, ChatML template)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.json_grammar import JsonState
from router_helpers import sse_data, streamed_text

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


async def chat(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_response_shape_and_template(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    body = await chat(client, messages=MESSAGES, max_tokens=8, temperature=0.0, return_token_ids=True)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["logprobs"] is None
    # The prompt is the ChatML rendering with the assistant's turn opened.
    prompt_ids = reference_llm.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert reference_llm.tokenizer.decode(list(prompt_ids)) == CHATML
    assert choice["prompt_token_ids"] == list(prompt_ids)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    [expected] = reference_llm.generate([list(prompt_ids)], SamplingParams(max_tokens=8, temperature=0.0))
    assert choice["token_ids"] == expected.token_ids
    assert choice["message"]["content"] == expected.text


async def test_text_parts_and_developer_role(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    parts = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None},
    ]
    body = await chat(client, messages=parts, max_tokens=2, return_token_ids=True)
    # developer renders as system, text parts are joined with a newline, null content is empty.
    plain = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": ""},
    ]
    expected = reference_llm.tokenizer.apply_chat_template(
        plain, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert body["choices"][0]["prompt_token_ids"] == list(expected)


async def test_max_completion_tokens_wins_over_max_tokens(client: httpx.AsyncClient) -> None:
    body = await chat(client, messages=MESSAGES, max_tokens=9, max_completion_tokens=3, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


async def test_stream_deltas(client: httpx.AsyncClient) -> None:
    request = {"messages": MESSAGES, "max_tokens": 16, "ignore_eos": True, "temperature": 0.0}
    full = await chat(client, **request)
    response = await client.post("/v1/chat/completions", json={**request, "stream": True})
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(e["choices"][0]["delta"]) == {"content"} for e in chunks[1:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert streamed_text(events, chat=True) == full["choices"][0]["message"]["content"]


async def test_stream_n_with_usage_and_stop(client: httpx.AsyncClient) -> None:
    request = {"messages": MESSAGES, "max_tokens": 20, "n": 2, "seed": 5, "stop": ["e", "a"]}
    full = await chat(client, **request)
    response = await client.post(
        "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = sse_data(response.text)
    assert events[-2]["choices"] == [] and events[-2]["usage"] == full["usage"]
    for index in (0, 1):
        assert streamed_text(events, index, chat=True) == full["choices"][index]["message"]["content"]


async def test_logprobs(client: httpx.AsyncClient) -> None:
    body = await chat(client, messages=MESSAGES, max_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=0)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert entry["top_logprobs"] == []
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0.0


async def test_top_logprobs(client: httpx.AsyncClient) -> None:
    request = {"messages": MESSAGES, "max_tokens": 5, "ignore_eos": True, "logprobs": True, "top_logprobs": 4}
    content = (await chat(client, **request, temperature=0))["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 4
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)
        # Greedy: the chosen token is the most likely one.
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], pytest.approx(entry["logprob"]))
    response = await client.post("/v1/chat/completions", json={**request, "temperature": 0, "stream": True})
    events = sse_data(response.text)[:-1]
    streamed = [t for e in events for c in e["choices"] if c.get("logprobs") for t in c["logprobs"]["content"]]
    # The same alternatives; the logprobs to float rounding (the repeat's prompt comes from the prefix cache).
    assert [[t["token"] for t in e["top_logprobs"]] for e in streamed] == [
        [t["token"] for t in e["top_logprobs"]] for e in content
    ]
    for got, want in zip(streamed, content, strict=True):
        assert [t["logprob"] for t in got["top_logprobs"]] == pytest.approx(
            [t["logprob"] for t in want["top_logprobs"]]
        )


async def test_json_mode(client: httpx.AsyncClient) -> None:
    request = {"messages": MESSAGES, "max_tokens": 48, "response_format": {"type": "json_object"}, "seed": 2}
    body = await chat(client, **request, temperature=1.0)
    choice = body["choices"][0]
    state = JsonState().feed(choice["message"]["content"])
    assert state is not None  # an object, or its start when max_tokens ran out
    assert (choice["finish_reason"] == "stop") == state.complete
    if state.complete:
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    response = await client.post("/v1/chat/completions", json={**request, "temperature": 1.0, "stream": True})
    assert streamed_text(sse_data(response.text), chat=True) == choice["message"]["content"]


async def test_vllm_structured_outputs_fields(client: httpx.AsyncClient) -> None:
    """vLLM's structured_outputs (json, json_object, choice) and its older guided_json and
    guided_choice constrain the reply as response_format does."""
    base = {"messages": MESSAGES, "max_tokens": 40, "temperature": 1.0, "seed": 5}
    choices = ["alpha", "beta", "be"]
    for fields in ({"structured_outputs": {"choice": choices}}, {"guided_choice": choices}):
        body = await chat(client, **base, **fields)
        assert body["choices"][0]["message"]["content"] in choices and body["choices"][0]["finish_reason"] == "stop"
    schema = {"enum": ["yes", "no"]}
    for fields in ({"structured_outputs": {"json": schema}}, {"guided_json": schema}):
        body = await chat(client, **base, **fields)
        assert json.loads(body["choices"][0]["message"]["content"]) in ("yes", "no")
    for fields in ({"structured_outputs": {"regex": r"\d{3}-\d{2}"}}, {"guided_regex": r"\d{3}-\d{2}"}):
        body = await chat(client, **base, **fields)
        assert re.fullmatch(r"\d{3}-\d{2}", body["choices"][0]["message"]["content"])
    body = await chat(client, **base, structured_outputs={"json_object": True})
    assert JsonState().feed(body["choices"][0]["message"]["content"]) is not None
    # The same constraint as response_format json_schema gives the same reply.
    fmt = {"type": "json_schema", "json_schema": {"name": "yn", "schema": schema}}
    assert (await chat(client, **base, response_format=fmt))["choices"] == (
        await chat(client, **base, guided_json=schema)
    )["choices"]
