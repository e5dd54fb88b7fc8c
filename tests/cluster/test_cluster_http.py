"""The HTTP API in front of a real disaggregated cluster: parity, the openai client, cancel."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import openai
import pytest
from cluster_harness import NatsServer, start_cluster
from nats.aio.msg import Msg
from pdserve import LLM, SamplingParams
from pdserve.protocol import Subjects
from pdserve.services.bus import BusOptions, connect, flush


def mixed_prompts(n: int = 16) -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(256) for _ in range(rng.randint(3, 300))] for _ in range(n)]


async def complete(client: httpx.AsyncClient, prompt: list[int], stream: bool) -> list[int]:
    body = {
        "model": "test",
        "prompt": prompt,
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream": stream,
    }
    if not stream:
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return list(r.json()["choices"][0]["token_ids"])
    ids: list[int] = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                for choice in chunk["choices"]:
                    ids += choice.get("token_ids") or []
    return ids


async def test_http_disaggregated_and_colocated_match_offline(nats_server: NatsServer) -> None:
    ps = mixed_prompts()
    expected = [
        o.token_ids
        for o in LLM(dtype="float32").generate(ps, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    ]
    for shape in ({"prefill": 1, "decode": 1}, {"prefill": 0, "decode": 0, "colocated": 1}):
        cluster = await start_cluster(nats_server.url, http=True, **shape)
        try:
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
                streamed = await asyncio.gather(*[complete(client, p, True) for p in ps])
                whole = await asyncio.gather(*[complete(client, p, False) for p in ps])
            assert streamed == expected, shape
            assert whole == expected, shape
            await cluster.wait_idle()
        finally:
            await cluster.stop()


async def test_openai_client_against_the_cluster(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, http=True)
    try:
        client = openai.AsyncOpenAI(base_url=cluster.base_url + "/v1", api_key="unused")
        done = await client.completions.create(model="test", prompt="Hello", max_tokens=8, temperature=0)
        assert done.choices[0].finish_reason in ("stop", "length") and done.usage is not None
        chat = await client.chat.completions.create(
            model="test", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
        )
        assert chat.choices[0].message.role == "assistant"
        pieces = []
        stream = await client.chat.completions.create(
            model="test", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True
        )
        async for event in stream:
            if event.choices and event.choices[0].delta.content:
                pieces.append(event.choices[0].delta.content)
        assert "".join(pieces) == chat.choices[0].message.content
        await client.close()
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_client_disconnect_frees_decode_blocks_within_a_second(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, http=True)
    try:
        body = {"model": "test", "prompt": "Tell me everything", "max_tokens": 1800, "ignore_eos": True, "stream": True}
        decode = cluster.by_role("decode")[0]
        async with (
            httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen >= 5:
                    break
            assert decode.engine.kv_blocks_used > 0
        started = time.monotonic()
        await cluster.wait_idle(timeout=1.0)
        assert time.monotonic() - started <= 1.0
    finally:
        await cluster.stop()


async def test_finished_requests_send_no_cancel(nats_server: NatsServer) -> None:
    """A cancel goes to every worker; one per finished request would be a broadcast per request.
    The SSE writer stops reading at the finishing chunk, which once left the attempt looking
    unfinished, so every streamed request ended with a cancel."""
    cluster = await start_cluster(nats_server.url, http=True, prefill=1, decode=1, colocated=1)
    watcher = await connect(BusOptions(url=nats_server.url, cluster=cluster.cluster), name="cancel-watcher")
    cancels: list[bytes] = []

    async def seen(msg: Msg) -> None:
        cancels.append(msg.data)

    try:
        await watcher.subscribe(Subjects(cluster.cluster).cancel, cb=seen)
        await flush(watcher)
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
            for max_tokens in (1, 5):
                for stream in (True, False):
                    for _ in range(3):  # three requests spread over the colocated and the 1P:1D route
                        body = {"model": "test", "prompt": "hi", "max_tokens": max_tokens, "stream": stream}
                        assert (await client.post("/v1/completions", json=body)).status_code == 200
        await cluster.wait_idle()
        await flush(watcher)
        await asyncio.sleep(0.2)
        assert cancels == []
        # The watcher does hear a real cancel: a stream the client leaves early.
        body = {"model": "test", "prompt": "hi", "max_tokens": 500, "ignore_eos": True, "stream": True}
        async with (
            httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
        await cluster.wait_idle()
        await flush(watcher)
        assert len(cancels) == 1
    finally:
        await watcher.close()
        await cluster.stop()


async def test_top_logprobs_cross_the_cluster(nats_server: NatsServer) -> None:
    """The first token's alternatives come from the prefill worker (through the KV offer), the rest
    from the decode worker: every token's alternatives equal the offline engine's."""
    prompts = mixed_prompts(4)
    llm = LLM(dtype="float32")
    offline = llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, top_logprobs=3))
    expected = []  # per prompt, per token: text -> logprob (ids with the same text: the best one, as served)
    for out in offline:
        assert out.top_logprobs is not None
        by_text: list[dict[str, float]] = []
        for top in out.top_logprobs:
            texts: dict[str, float] = {}
            for token_id, logprob in top.items():
                texts.setdefault(llm.tokenizer.decode([token_id], skip_special_tokens=False), logprob)
            by_text.append(texts)
        expected.append(by_text)
    body = {"model": "test", "max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 3}
    for shape in ({"prefill": 1, "decode": 1}, {"prefill": 0, "decode": 0, "colocated": 1}):
        cluster = await start_cluster(nats_server.url, http=True, **shape)
        try:
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
                for prompt, want in zip(prompts, expected, strict=True):
                    for stream in (False, True):
                        r = await client.post("/v1/completions", json={**body, "prompt": prompt, "stream": stream})
                        assert r.status_code == 200, r.text
                        tops = _top_logprobs(r.text, stream)
                        assert [list(t) for t in tops] == [list(t) for t in want], (shape, stream)
                        for got_top, want_top in zip(tops, want, strict=True):
                            assert list(got_top.values()) == pytest.approx(list(want_top.values()), abs=1e-4)
            await cluster.wait_idle()
        finally:
            await cluster.stop()


def _top_logprobs(text: str, stream: bool) -> list[dict[str, float]]:
    if not stream:
        return list(json.loads(text)["choices"][0]["logprobs"]["top_logprobs"])
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["top_logprobs"]]


async def test_echoed_prompt_scores_come_from_the_prefill_worker(nats_server: NatsServer) -> None:
    """echo + logprobs: the prefill worker scores the prompt and sends the scores with the first
    token; they equal the offline engine's, disaggregated and colocated."""
    prompts = mixed_prompts(3)
    offline = LLM(dtype="float32").generate(
        prompts, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    )
    body = {"model": "test", "max_tokens": 2, "temperature": 0, "ignore_eos": True, "logprobs": 1, "echo": True}
    for shape in ({"prefill": 1, "decode": 1}, {"prefill": 0, "decode": 0, "colocated": 1}):
        cluster = await start_cluster(nats_server.url, http=True, **shape)
        try:
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
                for prompt, out in zip(prompts, offline, strict=True):
                    r = await client.post("/v1/completions", json={**body, "prompt": prompt})
                    assert r.status_code == 200, r.text
                    scores = r.json()["choices"][0]["logprobs"]["token_logprobs"][: len(prompt)]
                    assert out.prompt_logprobs is not None and scores[0] is None
                    assert scores[1:] == pytest.approx(out.prompt_logprobs[1:], abs=1e-4), shape
            await cluster.wait_idle()
        finally:
            await cluster.stop()


async def test_penalties_and_logit_bias_cross_the_cluster(nats_server: NatsServer) -> None:
    """Token ids in logit_bias travel as strings (msgpack maps take no int keys) and come back as
    ids on both workers; penalties apply on the prefill worker's first token and the decode
    worker's rest alike."""
    prompts = mixed_prompts(3)
    fields = {"repetition_penalty": 1.3, "frequency_penalty": 0.4, "logit_bias": {"7": 3.0, "11": -100.0}}
    params = SamplingParams(
        max_tokens=10,
        temperature=0.0,
        ignore_eos=True,
        repetition_penalty=1.3,
        frequency_penalty=0.4,
        logit_bias={7: 3.0, 11: -100.0},
    )
    offline = LLM(dtype="float32")
    expected = [o.token_ids for o in offline.generate(prompts, params)]
    sampled = SamplingParams(max_tokens=10, temperature=1.5, min_p=0.2, seed=9, ignore_eos=True)
    want_sampled = offline.generate([prompts[0]], sampled)[0].token_ids
    body = {"model": "test", "max_tokens": 10, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    cluster = await start_cluster(nats_server.url, http=True)
    try:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
            for prompt, want in zip(prompts, expected, strict=True):
                r = await client.post("/v1/completions", json={**body, **fields, "prompt": prompt})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["token_ids"] == want
                assert 11 not in want
            bad = await client.post("/v1/completions", json={**body, "prompt": [1, 2], "logit_bias": {"9999999": 1}})
            assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
            # The decode worker writes the final text: skip_special_tokens reaches it (<|pad|> is 258).
            pad = {**body, "prompt": [1, 2], "max_tokens": 3, "logit_bias": {"258": 100}, "skip_special_tokens": False}
            r = await client.post("/v1/completions", json=pad)
            assert r.json()["choices"][0]["text"] == "<|pad|>" * 3
            # min_p on both workers: seeded tokens as offline.
            fields = {"temperature": 1.5, "min_p": 0.2, "seed": 9}
            r = await client.post("/v1/completions", json={**body, **fields, "prompt": prompts[0]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["token_ids"] == want_sampled
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_json_mode_across_the_cluster(nats_server: NatsServer) -> None:
    """JSON mode's, structured output's and a forced tool call's grammar state follows the
    request from the prefill worker (first token) to the decode worker (the rest): the offline
    engine's tokens, disaggregated and colocated."""
    llm = LLM(dtype="float32")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "integer"}},
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    formats = [
        ({"type": "json_object"}, {"json_object": True}),
        ({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}, {"json_schema": schema}),
    ]
    conversations = [[{"role": "user", "content": text}] for text in ("x", "Give me JSON", "a b c")]
    prompts = [
        [int(t) for t in llm.tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)]
        for c in conversations
    ]
    expected = [
        [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=24, temperature=1.0, seed=4, **kw))]
        for _, kw in formats
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]
    tool_prompt = [
        int(t)
        for t in llm.tokenizer.apply_chat_template(
            conversations[0], tools=tools, add_generation_prompt=True, return_dict=False
        )
    ]
    [tool_out] = llm.generate([tool_prompt], SamplingParams(max_tokens=24, temperature=1.0, seed=4, json_schema=schema))
    tool_expected, tool_text = tool_out.token_ids, tool_out.text
    body = {"model": "test", "max_tokens": 24, "temperature": 1.0, "seed": 4, "return_token_ids": True}
    for shape in ({"prefill": 1, "decode": 1}, {"prefill": 0, "decode": 0, "colocated": 1}):
        cluster = await start_cluster(nats_server.url, http=True, **shape)
        try:
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
                for (fmt, _), wanted in zip(formats, expected, strict=True):
                    for messages, prompt, want in zip(conversations, prompts, wanted, strict=True):
                        r = await client.post(
                            "/v1/chat/completions", json={**body, "messages": messages, "response_format": fmt}
                        )
                        assert r.status_code == 200, r.text
                        choice = r.json()["choices"][0]
                        assert choice["prompt_token_ids"] == prompt
                        assert choice["token_ids"] == want, (shape, fmt["type"])
                # A forced tool call: the router renders the tools and turns the schema-held
                # reply into tool_calls; the workers enforce the function's parameters.
                forced = {"type": "function", "function": {"name": "lookup"}}
                r = await client.post(
                    "/v1/chat/completions",
                    json={**body, "messages": conversations[0], "tools": tools, "tool_choice": forced},
                )
                assert r.status_code == 200, r.text
                [call] = r.json()["choices"][0]["message"]["tool_calls"]
                assert r.json()["choices"][0]["token_ids"] == tool_expected, shape
                assert call["function"]["name"] == "lookup" and call["function"]["arguments"] == tool_text
            await cluster.wait_idle()
        finally:
            await cluster.stop()


async def test_prompt_logprobs_in_vllms_shape_cross_the_cluster(nats_server: NatsServer) -> None:
    """`prompt_logprobs` (vLLM's field): scores, ranks and alternatives computed by the prefill
    worker reach the client in vLLM's shape and equal the offline engine's."""
    prompt = mixed_prompts(1)[0]
    offline = LLM(dtype="float32").generate(
        [prompt], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, prompt_logprobs=2)
    )[0]
    assert offline.prompt_logprobs is not None and offline.prompt_ranks is not None
    body = {"model": "test", "prompt": prompt, "max_tokens": 2, "temperature": 0, "ignore_eos": True}
    cluster = await start_cluster(nats_server.url, http=True, prefill=1, decode=1)
    try:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
            r = await client.post("/v1/completions", json={**body, "prompt_logprobs": 2})
        assert r.status_code == 200, r.text
        scores = r.json()["choices"][0]["prompt_logprobs"]
        assert len(scores) == len(prompt) and scores[0] is None
        for i, entry in enumerate(scores[1:], start=1):
            own = entry[str(prompt[i])]
            assert own["logprob"] == pytest.approx(offline.prompt_logprobs[i], abs=1e-4)
            assert own["rank"] == offline.prompt_ranks[i]
            assert 2 <= len(entry) <= 3 and {1, 2} <= {e["rank"] for e in entry.values()}
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_stop_reason_crosses_the_cluster(nats_server: NatsServer) -> None:
    """The decode worker's finishing chunk names the stop token id (or string) that ended it."""
    prompt = mixed_prompts(1)[0]
    greedy = {"max_tokens": 20, "temperature": 0.0, "ignore_eos": True}
    llm = LLM(dtype="float32")
    token = llm.generate([prompt], SamplingParams(**greedy))[0].token_ids[6]  # type: ignore[arg-type]
    cluster = await start_cluster(nats_server.url, http=True, prefill=1, decode=1)
    try:
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=60) as client:
            body = {"model": "test", "prompt": prompt, **greedy, "stop_token_ids": [token]}
            r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == token
        await cluster.wait_idle()
    finally:
        await cluster.stop()
