"""CORS at the router (--allowed-origins, --allowed-methods, --allowed-headers,
--allow-credentials): off by default; when on, preflights are answered, and every answer to an
allowed origin carries the headers, on the fast generation routes and FastAPI's alike, refusals
included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.services.router.cors import CorsPolicy, cors_policy, parse_list
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, sse_data, streamed_text

APP = "https://app.example.com"
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}


async def client_for(backend: LocalBackend, engine: LLMEngine, **options: object) -> httpx.AsyncClient:
    app = create_app(backend, engine.tokenizer, model_name=MODEL, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router")


@pytest.fixture
async def cors_client(backend: LocalBackend, engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    policy = cors_policy(APP)
    async with await client_for(backend, engine, cors=policy, api_keys=["sekret"]) as client:
        yield client


AUTH = {"Authorization": "Bearer sekret"}


async def test_preflight_for_an_allowed_origin(cors_client: httpx.AsyncClient) -> None:
    headers = {"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    answer = await cors_client.options("/v1/chat/completions", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP
    assert "POST" in answer.headers["access-control-allow-methods"]
    refused = await cors_client.options("/v1/completions", headers={**headers, "Origin": "https://evil.example"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


async def test_generation_answers_carry_the_headers(cors_client: httpx.AsyncClient) -> None:
    plain = await cors_client.post("/v1/completions", json=BODY, headers={**AUTH, "Origin": APP})
    streamed = await cors_client.post("/v1/completions", json={**BODY, "stream": True}, headers={**AUTH, "Origin": APP})
    for answer in (plain, streamed):
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
    assert streamed_text(sse_data(streamed.text)) == plain.json()["choices"][0]["text"]
    models = await cors_client.get("/v1/models", headers={**AUTH, "Origin": APP})  # a FastAPI route
    assert models.status_code == 200 and models.headers["access-control-allow-origin"] == APP


async def test_refusals_carry_the_headers_too(cors_client: httpx.AsyncClient) -> None:
    # A browser app can only read an error whose answer names its origin.
    no_key = await cors_client.post("/v1/completions", json=BODY, headers={"Origin": APP})
    bad = await cors_client.post("/v1/completions", json={**BODY, "max_tokens": -1}, headers={**AUTH, "Origin": APP})
    assert (no_key.status_code, bad.status_code) == (401, 400)
    assert no_key.headers["access-control-allow-origin"] == APP == bad.headers["access-control-allow-origin"]


async def test_other_origins_get_no_headers(cors_client: httpx.AsyncClient) -> None:
    answer = await cors_client.post("/v1/completions", json=BODY, headers={**AUTH, "Origin": "https://evil.example"})
    assert answer.status_code == 200  # CORS is the browser's rule: the server answers, the browser hides it
    assert "access-control-allow-origin" not in answer.headers


async def test_off_by_default(backend: LocalBackend, engine: LLMEngine) -> None:
    async with await client_for(backend, engine) as client:
        answer = await client.post("/v1/completions", json=BODY, headers={"Origin": APP})
        preflight = await client.options(
            "/v1/completions", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
        )
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    assert preflight.status_code == 405


def test_flags_are_parsed_and_checked() -> None:
    assert cors_policy(None) is None
    assert cors_policy('["https://a.example", "http://localhost:3000"]') == CorsPolicy(
        ("https://a.example", "http://localhost:3000")
    )
    policy = cors_policy("*", "GET, POST", "content-type,authorization", allow_credentials=True)
    assert policy == CorsPolicy(("*",), ("GET", "POST"), ("content-type", "authorization"), True)
    assert parse_list(" a , b ,", "--x") == ("a", "b")
    for bad, message in (
        ("app.example.com", "is not an origin"),
        ("https://app.example.com/", "ends with '/'"),
        ("[1, 2]", "JSON list of strings"),
        ("[oops", "not a JSON list"),
        (" , ", "no values"),
    ):
        with pytest.raises(ValueError, match=message):
            cors_policy(bad)
    with pytest.raises(ValueError, match="need --allowed-origins"):
        cors_policy(None, allow_credentials=True)
