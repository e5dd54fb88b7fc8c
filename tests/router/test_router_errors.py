"""Every failure answers in OpenAI's error shape with the right status, and never leaks internals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pdserve.engine.llm_engine import LLMEngine
from pdserve.protocol import TokenChunk
from pdserve.services.router import create_app
from pdserve.serving.backend import GenerateRequest
from router_helpers import ScriptedBackend, assert_error, chunk, sse_data


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": 5}, "prompt", ["prompt", "str"]),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens", []),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", ["at least 1", "echo"]),
        ({"prompt": "x", "max_tokens": -3}, "max_tokens", []),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens", []),
        ({"prompt": "x", "temperature": "hot"}, "temperature", []),
        ({"prompt": "x", "temperature": 101}, "temperature", []),
        ({"prompt": "x", "top_p": 0}, "top_p", []),
        ({"prompt": "x", "min_p": 1.01}, "min_p", []),
        ({"prompt": "x", "min_p": -0.5}, "min_p", []),
        ({"prompt": "x", "stream": "yes"}, "stream", []),
        ({"prompt": [1, "a"]}, "prompt", ["prompt.1"]),
        ({"prompt": [-1]}, "prompt", []),
        ({}, "prompt", ["field required"]),
        ({"prompt": "x", "tools": []}, "tools", ["unsupported"]),
        ({"prompt": "x", "echo": "yes"}, "echo", []),
        ({"prompt": "x", "logprobs": 21}, "logprobs", ["less than or equal to 20"]),
        ({"prompt": "x", "logprobs": True}, "logprobs", []),
        ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty", []),
        ({"prompt": "x", "repetition_penalty": -1}, "repetition_penalty", []),
        ({"prompt": "x", "n": 9}, "n", ["at most 8"]),
        ({"prompt": "x", "stop": [""]}, None, ["stop"]),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", []),
        ({"prompt": ""}, "prompt", ["empty"]),
        ({"prompt": []}, "prompt", ["empty"]),
        ({"prompt": [[]]}, "prompt", []),
        ({"prompt": "x", "seed": 1 << 70}, "seed", []),
    ],
)
async def test_completion_validation_errors(client: httpx.AsyncClient, body: dict, param: str | None, words) -> None:
    error = assert_error(await client.post("/v1/completions", json=body), 400, param, *words)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        *[
            ({"messages": [{"role": "user", "content": "x"}], "response_format": fmt}, "response_format")
            for fmt in (
                {"type": "json_schema", "json_schema": {"name": "s"}},  # no schema
                {"type": "json_schema", "json_schema": {"schema": {}}},  # no name
                {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {"type": "string", "pattern": "(?<=a)b"}},
                },
                {"type": "json_schema", "json_schema": {"name": "s", "schema": {"$ref": "#/nowhere"}}},
                {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "x": 1}},
                {"type": "json_object", "json_schema": {"name": "s", "schema": {}}},
            )
        ],
        *[
            ({"messages": [{"role": "user", "content": "x"}], **fields}, param)
            for fields, param in (
                ({"structured_outputs": {}}, "structured_outputs"),  # nothing set
                ({"structured_outputs": {"json_object": False}}, "structured_outputs"),
                ({"structured_outputs": {"json": {}, "choice": ["a"]}}, "structured_outputs"),  # two set
                ({"structured_outputs": {"grammar": "root ::= x"}}, "structured_outputs"),  # not supported
                ({"structured_outputs": {"regex": "(?=a)"}}, "structured_outputs"),
                ({"guided_regex": "a{2,1}"}, "guided_regex"),
                ({"structured_outputs": {"choice": []}}, "structured_outputs"),
                ({"guided_choice": ["a", ""]}, "guided_choice"),
                ({"guided_json": {"type": "number", "multipleOf": 3}}, "guided_json"),
                ({"guided_json": {}, "guided_choice": ["a"]}, "guided_choice"),  # both
                ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "guided_choice"),
            )
        ],
    ],
)
async def test_chat_validation_errors(client: httpx.AsyncClient, body: dict, param: str) -> None:
    assert_error(await client.post("/v1/chat/completions", json=body), 400, param)


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    assert_error(await client.post("/v1/completions", content=b"{bad", headers=headers), 400, None, "JSON")
    assert_error(await client.post("/v1/completions", content=b"\xff\xfe", headers=headers), 400)
    assert_error(await client.post("/v1/completions", content=b"[1, 2]", headers=headers), 400)
    assert_error(await client.post("/v1/completions", content=b'{"prompt": NaN}', headers=headers), 400)
    nan = b'{"prompt": "x", "temperature": NaN}'
    assert_error(await client.post("/v1/completions", content=nan, headers=headers), 400, "temperature")
    # JSON may carry lone surrogates; nothing downstream (tokenizer, logs, msgpack) can encode them.
    for path, body in [
        ("/v1/completions", b'{"prompt": "a\\ud800b"}'),
        ("/v1/completions", b'{"prompt": ["ok", "\\udfff"]}'),
        ("/v1/completions", b'{"prompt": "a", "stop": "\\ud800"}'),
        ("/v1/completions", b'{"prompt": "a", "model": "\\ud800"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}'),
    ]:
        assert_error(await client.post(path, content=body, headers=headers), 400, None, "surrogate")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_error(await client.post("/v1/completions", content=deep, headers=headers), 400)
    assert_error(await client.post("/v1/completions", content=b"prompt=x", headers={"content-type": "text/plain"}), 400)


async def test_prompt_too_long_and_context_overflow(client: httpx.AsyncClient, backend) -> None:
    limit = backend.max_model_len
    error = assert_error(await client.post("/v1/completions", json={"prompt": [65] * limit}), 400, "prompt", str(limit))
    assert str(limit - 1) in error["message"]
    error = assert_error(
        await client.post("/v1/completions", json={"prompt": [65] * 100, "max_tokens": limit}),
        400,
        "max_tokens",
        str(limit),
        str(limit + 100),
    )
    long_chat = {"messages": [{"role": "user", "content": "x" * limit}]}
    assert_error(await client.post("/v1/chat/completions", json=long_chat), 400, "messages")


async def test_server_limits(backend, engine: LLMEngine) -> None:
    app = create_app(
        backend,
        engine.tokenizer,
        model_name="tiny",
        max_prompt_tokens=30,
        max_tokens_limit=5,
        max_n=2,
        max_body_bytes=1000,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        assert_error(await client.post("/v1/completions", json={"prompt": "x" * 31}), 400, "prompt", "30")
        assert_error(await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 6}), 400, "max_tokens")
        assert_error(await client.post("/v1/completions", json={"prompt": "x", "n": 3}), 400, "n")
        assert_error(await client.post("/v1/completions", json={"prompt": "x" * 2000}), 413)

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
            for _ in range(20):
                yield b" " * 100

        assert_error(await client.post("/v1/completions", content=chunked()), 413)
        # Without max_tokens, chat generates up to max_tokens_limit.
        response = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "ignore_eos": True}
        )
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 5


async def test_unknown_model_route_and_method(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"}), 404, "model")
    assert error["code"] == "model_not_found"
    assert_error(await client.get("/v1/nothing"), 404, None, "/v1/nothing")
    response = await client.get("/v1/completions")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


async def test_api_keys(backend, engine: LLMEngine) -> None:
    app = create_app(backend, engine.tokenizer, model_name="tiny", api_keys=["key-1", "key-2"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        body = {"prompt": "x", "max_tokens": 1}
        response = await client.post("/v1/completions", json=body)
        assert assert_error(response, 401)["code"] == "missing_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
        bad = await client.post("/v1/completions", json=body, headers={"Authorization": "Bearer key-3"})
        assert assert_error(bad, 401)["code"] == "invalid_api_key"
        basic = await client.post("/v1/completions", json=body, headers={"Authorization": "Basic key-1"})
        assert_error(basic, 401)
        # Checked before the body is even parsed.
        assert_error(await client.post("/v1/completions", content=b"{bad"), 401)
        for key in ("key-1", "key-2"):
            ok = await client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200, ok.text
        assert (await client.get("/v1/models")).status_code == 401
        # The tokenizer endpoints use the model as the API does: guarded alike.
        assert (await client.post("/tokenize", json={"prompt": "x"})).status_code == 401
        assert (await client.post("/detokenize", json={"tokens": [1]})).status_code == 401
        keyed = await client.post("/tokenize", json={"prompt": "x"}, headers={"Authorization": "Bearer key-1"})
        assert keyed.status_code == 200
        # Operations endpoints stay open (load balancers and Prometheus have no key).
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        schema = (await client.get("/openapi.json")).json()
        assert "HTTPBearer" in schema["components"]["securitySchemes"]


# -- backend failures, scripted -------------------------------------------------------------


def scripted_app(engine: LLMEngine, script) -> FastAPI:
    return create_app(ScriptedBackend(script), engine.tokenizer, model_name="tiny")


async def call(app: FastAPI, path: str = "/v1/completions", **body: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        return await client.post(path, json={"prompt": "hi", **body})


@pytest.mark.parametrize(("code", "error_type"), [(429, "rate_limit_error"), (503, "service_unavailable_error")])
@pytest.mark.parametrize("stream", [False, True])
async def test_refusal_before_the_first_token_is_an_http_status(
    engine: LLMEngine, code: int, error_type: str, stream: bool
) -> None:
    async def refuse(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [], finish_reason="error", error="all workers busy", error_code=code, extra={"retry_after_s": 3})

    response = await call(scripted_app(engine, refuse), stream=stream)
    error = assert_error(response, code, None, "busy")
    assert error["type"] == error_type
    assert response.headers["retry-after"] == "3"


async def test_one_refused_choice_fails_and_cancels_the_others(engine: LLMEngine) -> None:
    closed: list[str] = []

    async def script(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        try:
            if request.request_id.endswith("-1"):
                yield chunk(0, [], finish_reason="error", error="no room", error_code=503)
                return
            await asyncio.sleep(30)  # never produces its first token
            yield chunk(0, [65], finish_reason="length", text="A")
        finally:
            closed.append(request.request_id)

    response = await call(scripted_app(engine, script), n=3)
    assert_error(response, 503)
    assert len(closed) == 3


async def test_backend_bad_request_and_internal_errors(engine: LLMEngine) -> None:
    async def bad(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [], finish_reason="error", error="token id 999 is outside the vocabulary", error_code=400)

    assert_error(await call(scripted_app(engine, bad)), 400, None, "vocabulary")

    async def broken(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(
            0, [], finish_reason="error", error="CUDA error: device-side assert at /src/x.cu:12", error_code=500
        )

    error = assert_error(await call(scripted_app(engine, broken)), 500)
    assert "CUDA" not in error["message"]

    async def raises(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        raise RuntimeError("secret internal detail")
        yield  # pragma: no cover

    error = assert_error(await call(scripted_app(engine, raises)), 500)
    assert "secret" not in error["message"]


async def test_error_after_the_first_token_is_an_sse_error_event(engine: LLMEngine) -> None:
    async def script(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [72])
        yield chunk(1, [105])
        yield chunk(2, [], finish_reason="error", error="decode worker died", error_code=503)

    response = await call(scripted_app(engine, script), stream=True)
    assert response.status_code == 200
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["message"] == "decode worker died"
    assert events[-2]["error"]["type"] == "service_unavailable_error"
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "Hi"


async def test_duplicate_and_reordered_chunks_are_put_in_order(engine: LLMEngine) -> None:
    async def script(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [72])  # the prefill worker's first token
        yield chunk(2, [108, 108])  # the decode worker overtook it...
        yield chunk(1, [101])  # ...and the missing token arrives late
        yield chunk(0, [72])  # a duplicate
        yield chunk(1, [101, 108])  # an overlap
        yield chunk(4, [111], finish_reason="length", text="Hello")

    for stream in (False, True):
        response = await call(scripted_app(engine, script), stream=stream, return_token_ids=True)
        assert response.status_code == 200
        if stream:
            events = [e for e in sse_data(response.text) if e != "[DONE]"]
            assert "".join(e["choices"][0]["text"] for e in events) == "Hello"
            assert [t for e in events for t in e["choices"][0]["token_ids"]] == list(b"Hello")
        else:
            assert response.json()["choices"][0]["text"] == "Hello"
            assert response.json()["choices"][0]["token_ids"] == list(b"Hello")


async def test_a_gap_is_an_internal_error(engine: LLMEngine) -> None:
    async def script(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [72])
        yield chunk(3, [108], finish_reason="length", text="Hxxl")

    assert_error(await call(scripted_app(engine, script)), 500)
    events = sse_data((await call(scripted_app(engine, script), stream=True)).text)
    assert events[-2]["error"]["type"] == "internal_error" and events[-1] == "[DONE]"


async def test_backend_that_hangs_times_out_with_504(engine: LLMEngine) -> None:
    async def hang(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        await asyncio.sleep(60)
        yield chunk(0, [65])

    app = create_app(ScriptedBackend(hang), engine.tokenizer, model_name="tiny", request_timeout_s=0.05)
    error = assert_error(await call(app), 504)
    assert error["type"] == "timeout_error"

    async def late(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [], finish_reason="error", error="request deadline passed", error_code=504)

    assert_error(await call(scripted_app(engine, late)), 504, None, "deadline")


async def test_no_workers_is_503(engine: LLMEngine) -> None:
    async def never(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        raise AssertionError("must not be called")
        yield  # pragma: no cover

    app = create_app(ScriptedBackend(never, max_model_len=0, ready=False), engine.tokenizer, model_name="tiny")
    response = await call(app)
    assert_error(response, 503)
    assert response.headers["retry-after"] == "1"


async def test_unexpected_exception_is_a_clean_500(engine: LLMEngine) -> None:
    backend = ScriptedBackend(lambda request: None)

    def workers() -> list:
        raise RuntimeError("secret")

    backend.workers = workers
    app = create_app(backend, engine.tokenizer, model_name="tiny")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        response = await client.get("/cluster")
    error = assert_error(response, 500)
    assert "secret" not in json.dumps(error)
    assert response.headers["x-request-id"]
