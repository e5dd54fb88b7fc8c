"""Backpressure: past --max-inflight, and when the backend refuses, clients get 429/503 with Retry-After."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pdserve.cli import build_parser
from pdserve.engine.llm_engine import LLMEngine
from pdserve.protocol import TokenChunk
from pdserve.services.router import create_app
from pdserve.services.router.errors import MAX_RETRY_AFTER_S, retry_after_seconds
from pdserve.serving.backend import GenerateRequest
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, ScriptedBackend, assert_error, chunk, wait_until


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router")


async def test_requests_past_the_limit_get_429_at_once(engine: LLMEngine) -> None:
    release = asyncio.Event()

    async def held(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        await release.wait()
        yield chunk(0, [72], finish_reason="length", text="H")

    app = create_app(ScriptedBackend(held), engine.tokenizer, model_name=MODEL, max_inflight=2)
    metrics = app.state.router.metrics
    async with asgi_client(app) as client:
        body = {"prompt": "hi", "max_tokens": 1}
        first = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(2)]
        await wait_until(lambda: metrics.generations_in_flight == 2, 5.0, "two requests admitted")

        for path, extra in (("/v1/completions", {}), ("/v1/chat/completions", {"stream": True})):
            chat = {"messages": [{"role": "user", "content": "hi"}]}
            refused = await client.post(path, json={**(chat if "chat" in path else body), **extra})
            error = assert_error(refused, 429, None, "limit of 2")
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
            assert refused.headers["retry-after"] == "1"
        # Refused before the body is read: a malformed one is not even looked at.
        assert_error(await client.post("/v1/completions", content=b"{bad"), 429)
        # Probes, scrapes and the model list are not generation and stay available.
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
        scrape = (await client.get("/metrics")).text
        assert "pdserve_router_generations_in_flight 2" in scrape
        assert "pdserve_router_admission_refusals_total 3" in scrape

        release.set()
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
        assert metrics.generations_in_flight == 0
        assert (await client.post("/v1/completions", json=body)).status_code == 200


@pytest.fixture
def app(backend: LocalBackend, engine: LLMEngine) -> FastAPI:
    """The conftest app with room for one generation at a time (live_url serves it)."""
    return create_app(backend, engine.tokenizer, model_name=MODEL, max_inflight=1)


async def test_a_stream_holds_its_slot_until_it_ends(live_url: str, app: FastAPI) -> None:
    metrics = app.state.router.metrics
    long = {"prompt": "once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        async with client.stream("POST", "/v1/completions", json=long) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # generating now
            refused = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            assert_error(refused, 429)
            assert int(refused.headers["retry-after"]) >= 1
        # The client went away: the router cancels the generation and frees the slot.
        await wait_until(lambda: metrics.generations_in_flight == 0, 5.0, "the slot to be freed")
        ok = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("code", "extra", "retry_after"),
    [
        (429, {"retry_after_s": 2.2}, "3"),  # rounded up: not before
        (503, {}, "1"),  # ClusterBackend's "no live workers can serve the request"
        (429, {"retry_after_s": float("nan")}, "1"),
        (503, {"retry_after_s": 1e12}, str(MAX_RETRY_AFTER_S)),
        (429, {"retry_after_s": "soon"}, "1"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_backend_refusals_carry_retry_after(
    engine: LLMEngine, code: int, extra: dict, retry_after: str, stream: bool
) -> None:
    async def refuse(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        yield chunk(0, [], finish_reason="error", error="worker queue is full", error_code=code, extra=extra)

    app = create_app(ScriptedBackend(refuse), engine.tokenizer, model_name=MODEL)
    async with asgi_client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "hi", "stream": stream})
    assert_error(response, code, None, "queue is full")
    assert response.headers["retry-after"] == retry_after
    assert app.state.router.metrics.generations_in_flight == 0


def test_retry_after_seconds() -> None:
    assert retry_after_seconds(None) == 1
    assert retry_after_seconds(0) == 1
    assert retry_after_seconds(-5) == 1
    assert retry_after_seconds(0.1) == 1
    assert retry_after_seconds(4.0) == 4
    assert retry_after_seconds(math.inf) == 1
    assert retry_after_seconds(1e30) == MAX_RETRY_AFTER_S


def test_limit_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["router"])
    assert (args.max_inflight, args.max_n, args.max_body_bytes) == (1024, 8, 4 << 20)
    assert args.max_prompt_tokens is None and args.max_tokens_limit is None
    args = build_parser().parse_args(["router", "--max-inflight", "5", "--max-tokens-limit", "100"])
    assert (args.max_inflight, args.max_tokens_limit) == (5, 100)
    monkeypatch.setenv("PDSERVE_MAX_INFLIGHT", "7")
    assert build_parser().parse_args(["router"]).max_inflight == 7
    assert build_parser().parse_args(["up"]).max_inflight == 7


def test_bad_limits_are_refused_at_startup(engine: LLMEngine) -> None:
    backend = ScriptedBackend(lambda request: None)  # type: ignore[arg-type, return-value]
    for options in ({"max_inflight": 0}, {"max_inflight": -1}, {"max_n": 0}, {"max_n": 1000}):
        with pytest.raises(ValueError):
            create_app(backend, engine.tokenizer, model_name=MODEL, **options)  # type: ignore[arg-type]
