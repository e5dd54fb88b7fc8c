"""POST /v1/completions against a real engine (LocalBackend, built-in tiny model)."""

from __future__ import annotations

import json

import httpx
import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.json_grammar import JsonState
from pdserve.engine.json_schema import compiled_schema, schema_text
from pdserve.engine.schema_grammar import SchemaState
from router_helpers import MODEL, assert_error, sse_data, streamed_text

GREEDY = {"temperature": 0.0}


async def complete(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_response_shape_and_usage(client: httpx.AsyncClient) -> None:
    body = await complete(client, model=MODEL, prompt="Hello", max_tokens=6, **GREEDY)
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    assert "token_ids" not in choice  # only with return_token_ids
    usage = body["usage"]
    assert usage["prompt_tokens"] == 5  # byte-level tokenizer: one token per byte
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


async def test_cached_tokens_are_reported(client: httpx.AsyncClient) -> None:
    prompt = "A prompt of more than two blocks of sixteen tokens each, " * 2
    await complete(client, prompt=prompt, max_tokens=2)
    again = await complete(client, prompt=prompt, max_tokens=2)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 32


async def test_greedy_output_equals_offline_llm(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    prompt = "The quick brown fox"
    body = await complete(client, prompt=prompt, max_tokens=12, return_token_ids=True, **GREEDY)
    [expected] = reference_llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))
    [choice] = body["choices"]
    assert choice["token_ids"] == expected.token_ids
    assert choice["text"] == expected.text
    assert choice["finish_reason"] == expected.finish_reason
    assert choice["prompt_token_ids"] == list(prompt.encode())


async def test_token_id_prompt_equals_text_prompt(client: httpx.AsyncClient) -> None:
    by_text = await complete(client, prompt="abc", max_tokens=5, return_token_ids=True, **GREEDY)
    by_ids = await complete(client, prompt=[97, 98, 99], max_tokens=5, return_token_ids=True, **GREEDY)
    assert by_ids["choices"][0]["token_ids"] == by_text["choices"][0]["token_ids"]
    assert by_ids["usage"]["prompt_tokens"] == 3


async def test_prompt_list_and_n_give_choices_in_index_order(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt=["ab", "xyz"], n=2, max_tokens=4, seed=7, return_token_ids=True)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [len(c["prompt_token_ids"]) for c in choices] == [2, 2, 3, 3]
    assert body["usage"]["prompt_tokens"] == 5  # each prompt once, whatever n is
    assert body["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)


async def test_n_choices_use_derived_seeds(client: httpx.AsyncClient) -> None:
    two = await complete(client, prompt="Hi", n=2, max_tokens=8, seed=123, ignore_eos=True, return_token_ids=True)
    again = await complete(client, prompt="Hi", n=2, max_tokens=8, seed=123, ignore_eos=True, return_token_ids=True)
    one = await complete(client, prompt="Hi", max_tokens=8, seed=124, ignore_eos=True, return_token_ids=True)
    ids = [c["token_ids"] for c in two["choices"]]
    assert ids == [c["token_ids"] for c in again["choices"]]  # reproducible
    assert ids[0] != ids[1]  # different seeds per choice
    assert ids[1] == one["choices"][0]["token_ids"]  # choice i samples with seed + i


async def test_logprobs_shape(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt="Hello", max_tokens=5, logprobs=0, ignore_eos=True, **GREEDY)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 5
    assert logprobs["top_logprobs"] is None  # logprobs 0: the chosen tokens' alone
    assert all(lp <= 0.0 for lp in logprobs["token_logprobs"])
    assert logprobs["text_offset"][0] == 0


async def test_top_logprobs(client: httpx.AsyncClient) -> None:
    request = {"prompt": "Hello", "max_tokens": 6, "logprobs": 3, "ignore_eos": True, **GREEDY}
    logprobs = (await complete(client, **request))["choices"][0]["logprobs"]
    tops = logprobs["top_logprobs"]
    assert len(tops) == len(logprobs["tokens"]) == 6
    for token, chosen, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True):
        assert 1 <= len(top) <= 3  # 3, fewer only where two ids decode to the same text
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert next(iter(top)) == token and top[token] == pytest.approx(chosen)
    # Streamed, the same alternatives arrive spread over the chunks.
    response = await client.post("/v1/completions", json={**request, "stream": True})
    events = sse_data(response.text)[:-1]
    streamed = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["top_logprobs"]]
    assert [list(t) for t in streamed] == [list(t) for t in tops]
    for got, want in zip(streamed, tops, strict=True):
        assert list(got.values()) == pytest.approx(list(want.values()))


async def test_stream_chunks_add_up_to_the_response(client: httpx.AsyncClient) -> None:
    request = {"prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True, **GREEDY}
    full = await complete(client, **request)
    response = await client.post("/v1/completions", json={**request, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "text_completion" and e["id"] == chunks[0]["id"] for e in chunks)
    assert all("usage" not in e for e in chunks)  # no include_usage: no usage key at all
    assert [e["choices"][0]["finish_reason"] for e in chunks][-1] == full["choices"][0]["finish_reason"]
    assert all(e["choices"][0]["finish_reason"] is None for e in chunks[:-1])
    assert streamed_text(events) == full["choices"][0]["text"]


def clean_substring(text: str, length: int, start: int) -> str:
    """The first substring of `length` characters at or after `start` with no U+FFFD in it."""
    for i in range(start, len(text) - length):
        if "\ufffd" not in text[i : i + length]:
            return text[i : i + length]
    raise AssertionError(f"no clean substring of {length} characters in {text!r}")


@pytest.mark.parametrize(
    "pick_stops",
    [
        pytest.param(lambda text: [clean_substring(text, 2, 6)], id="one-stop-2-chars"),
        pytest.param(lambda text: ["zzzzzz", clean_substring(text, 3, 3)], id="two-stops"),
        pytest.param(lambda text: [clean_substring(text, 1, 4)], id="one-char"),
        pytest.param(lambda text: ["never produced"], id="no-match"),
    ],
)
async def test_stream_with_stop_strings_equals_non_stream(
    client: httpx.AsyncClient, reference_llm: LLM, pick_stops
) -> None:
    # Stop strings the model really produces, so the cut happens mid-stream.
    prompt = "Once upon a time"
    [free] = reference_llm.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    stops = pick_stops(free.text)
    request = {"prompt": prompt, "max_tokens": 40, "ignore_eos": True, "stop": stops, **GREEDY}
    full = await complete(client, **request)
    [choice] = full["choices"]
    matched = [s for s in stops if s in free.text]
    if matched:
        assert choice["finish_reason"] == "stop"
        assert choice["text"] == free.text[: min(free.text.index(s) for s in matched)]
    else:
        assert choice["text"] == free.text
    response = await client.post("/v1/completions", json={**request, "stream": True})
    events = sse_data(response.text)
    assert streamed_text(events) == choice["text"]
    assert events[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    # The holdback never lets a stop string out, not even in the middle of the stream.
    assert not any(s in streamed_text(events) for s in stops)


async def test_stream_include_usage(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions",
        json={
            "prompt": ["ab", "cd"],
            "n": 2,
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 1,
        },
    )
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 4
    assert all(e["usage"] is None for e in events[:-2])
    assert {c["index"] for e in events[:-2] for c in e["choices"]} == {0, 1, 2, 3}
    finished = [c["index"] for e in events[:-2] for c in e["choices"] if c["finish_reason"] is not None]
    assert sorted(finished) == [0, 1, 2, 3]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_stream_continuous_usage_stats(client: httpx.AsyncClient, path: str) -> None:
    """vLLM's continuous_usage_stats: every chunk carries the usage so far; only with include_usage."""
    body: dict = {"max_tokens": 6, "ignore_eos": True, "stream": True, "return_token_ids": True}
    if path == "/v1/completions":
        body["prompt"] = "abc"
    else:
        body["messages"] = [{"role": "user", "content": "abc"}]
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = sse_data((await client.post(path, json={**body, "stream_options": options})).text)
    chunks = [e for e in events[:-1] if e["choices"]]
    final = events[-2]["usage"]
    assert final["completion_tokens"] == 6 and events[-2]["choices"] == []
    generated = 0
    for chunk in chunks:
        generated += len(chunk["choices"][0].get("token_ids") or [])
        usage = chunk["usage"]
        assert usage["prompt_tokens"] == final["prompt_tokens"]
        assert usage["completion_tokens"] == generated and usage["total_tokens"] == usage["prompt_tokens"] + generated
    # Without include_usage the flag does nothing, as in vLLM.
    events = sse_data((await client.post(path, json={**body, "stream_options": {"continuous_usage_stats": True}})).text)
    assert all("usage" not in e for e in events[:-1])


async def test_stream_return_token_ids_and_logprobs(client: httpx.AsyncClient) -> None:
    request = {"prompt": "Hey", "max_tokens": 10, "ignore_eos": True, "return_token_ids": True, "logprobs": 0}
    full = await complete(client, **request, **GREEDY)
    response = await client.post("/v1/completions", json={**request, **GREEDY, "stream": True})
    chunks = [e for e in sse_data(response.text) if e != "[DONE]"]
    assert chunks[0]["choices"][0]["prompt_token_ids"] == [72, 101, 121]
    assert all("prompt_token_ids" not in e["choices"][0] for e in chunks[1:])
    streamed_ids = [t for e in chunks for t in e["choices"][0]["token_ids"]]
    assert streamed_ids == full["choices"][0]["token_ids"]
    streamed_logprobs = [lp for e in chunks for lp in e["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed_logprobs == pytest.approx(full["choices"][0]["logprobs"]["token_logprobs"])
    offsets = [o for e in chunks for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == full["choices"][0]["logprobs"]["text_offset"]


async def test_max_tokens_null_runs_to_the_end_of_the_context(client: httpx.AsyncClient, backend) -> None:
    prompt = [65] * (backend.max_model_len - 3)
    body = await complete(client, prompt=prompt, max_tokens=None, ignore_eos=True, **GREEDY)
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


async def test_neutral_vllm_sampling_fields_are_accepted(client: httpx.AsyncClient) -> None:
    """vLLM's `bench serve` sends repetition_penalty 1.0 with every request."""
    body = await complete(client, model=MODEL, prompt="Hello", max_tokens=2, repetition_penalty=1.0, **GREEDY)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


async def test_json_mode_in_completions(client: httpx.AsyncClient) -> None:
    """vLLM's extension: completions take chat's response_format too."""
    request = {"prompt": "JSON please:", "max_tokens": 40, "temperature": 1.0, "seed": 2}
    body = await complete(client, **request, response_format={"type": "json_object"})
    choice = body["choices"][0]
    state = JsonState().feed(choice["text"])
    assert state is not None and (choice["finish_reason"] == "stop") == state.complete
    plain = await complete(client, **request)
    assert JsonState().feed(plain["choices"][0]["text"]) is None  # without it, no JSON


async def test_structured_output_in_completions(client: httpx.AsyncClient) -> None:
    """vLLM's extension: completions take a json_schema response_format too."""
    numbers = {"type": "array", "items": {"type": "integer"}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": numbers}}
    body = await complete(client, prompt="Numbers:", max_tokens=24, temperature=1.0, seed=2, response_format=fmt)
    choice = body["choices"][0]
    state = SchemaState.start(compiled_schema(schema_text(numbers))).feed(choice["text"])
    assert state is not None, choice["text"]
    if choice["finish_reason"] == "stop":
        assert all(isinstance(x, int) for x in json.loads(choice["text"]))
    small = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer", "maximum": 3}}}
    body = await complete(client, prompt="x", max_tokens=24, temperature=1.0, seed=2, response_format=small)
    if body["choices"][0]["finish_reason"] == "stop":
        assert json.loads(body["choices"][0]["text"]) <= 3
    bad = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer", "multipleOf": 3}}}
    response = await client.post("/v1/completions", json={"prompt": "x", "response_format": bad})
    assert_error(response, 400, "response_format", "multipleOf")


async def test_truncate_prompt_tokens(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    """vLLM's truncate_prompt_tokens: the last k prompt tokens, in both endpoints; echo returns
    the text of what was kept."""
    body = {"prompt": "Hello there, world", "max_tokens": 4, "truncate_prompt_tokens": 5, "return_token_ids": True}
    done = await complete(client, **body, **GREEDY)
    ids = reference_llm.tokenizer("Hello there, world").input_ids[-5:]
    want = reference_llm.generate([ids], SamplingParams(max_tokens=4, temperature=0.0))[0]
    assert done["usage"]["prompt_tokens"] == 5 and done["choices"][0]["prompt_token_ids"] == ids
    assert done["choices"][0]["token_ids"] == want.token_ids
    echoed = await complete(client, **body, echo=True, **GREEDY)
    assert echoed["choices"][0]["text"].startswith(reference_llm.tokenizer.decode(ids))
    chat = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 2, "truncate_prompt_tokens": 4},
    )
    assert chat.json()["usage"]["prompt_tokens"] == 4
