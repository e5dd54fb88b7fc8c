"""The generation routes served past FastAPI's routing answer exactly as FastAPI's routing does:
same status, same body, same content type, on good requests and on a corpus of bad ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, sse_data

JSON = {"content-type": "application/json"}
GOOD = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}

# (path, raw body, headers): bodies FastAPI parses its own way (empty, not JSON, the wrong
# content type, no content type, a +json type) and bodies that fail validation in different places.
CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v1/completions", b"", JSON),
    ("/v1/completions", b"{", JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x",}', JSON),
    ("/v1/completions", b"\xff\xfe", JSON),
    ("/v1/completions", b"[1, 2]", JSON),
    ("/v1/completions", b"null", JSON),
    ("/v1/completions", b'"text"', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"}', {}),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"}', {"content-type": "text/plain"}),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": 0}', {"content-type": "application/x+json"}),
    ("/v1/completions", b'{"prompt": "x", "temperature": 0}', JSON),
    ("/v1/completions", b'{"model": "tiny"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": ""}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": [1, "a"]}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "max_tokens": -1}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": "hot"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "bogus": 1}', JSON),
    ("/v1/completions", b'{"model": "other", "prompt": "x"}', JSON),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "max_tokens": NaN}', JSON),
    ("/v1/chat/completions", b"", JSON),
    ("/v1/chat/completions", b"{}", JSON),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": []}', JSON),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', JSON),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user"}]}', JSON),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": "hi"}', {"content-type": "application/json; charset=x"}),
    # the spellings taken without the full content-type parse, and near misses that are not
    (
        "/v1/completions",
        b'{"model": "tiny", "prompt": "x", "n": 0}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    (
        "/v1/completions",
        b'{"model": "tiny", "prompt": "x", "n": 0}',
        {"content-type": "application/json;charset=utf-8"},
    ),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "n": 0}', {"content-type": "APPLICATION/JSON"}),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "n": 0}', {"content-type": "application/jsonx"}),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "n": 0}', {"content-type": "application/json ; q=1"}),
]


@pytest.fixture
async def clients(backend: LocalBackend, engine: LLMEngine) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    apps = {fast: create_app(backend, engine.tokenizer, model_name=MODEL, fast_routes=fast) for fast in (True, False)}
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(apps[True]), base_url="http://router") as fast,
        httpx.AsyncClient(transport=httpx.ASGITransport(apps[False]), base_url="http://router") as routed,
    ):
        yield {"fast": fast, "routed": routed}


def _comparable(response: httpx.Response) -> tuple[int, str, Any]:
    body: Any = response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        body = sse_data(response.text)
    for item in body if isinstance(body, list) else [body]:
        if isinstance(item, dict):
            item.pop("id", None)
            item.pop("created", None)
            if isinstance(item.get("usage"), dict):
                item["usage"].pop("prompt_tokens_details", None)  # the second request hits the prefix cache
    return response.status_code, response.headers.get("content-type", ""), body


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
async def test_odd_requests_answered_the_same(
    clients: dict[str, httpx.AsyncClient], path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast = await clients["fast"].post(path, content=body, headers=headers)
    routed = await clients["routed"].post(path, content=body, headers=headers)
    assert _comparable(fast) == _comparable(routed)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body"), [("/v1/completions", GOOD), ("/v1/chat/completions", CHAT)])
async def test_good_requests_answered_the_same(
    clients: dict[str, httpx.AsyncClient], path: str, body: dict[str, Any], stream: bool
) -> None:
    fast = await clients["fast"].post(path, json={**body, "stream": stream})
    routed = await clients["routed"].post(path, json={**body, "stream": stream})
    assert fast.status_code == 200, fast.text
    assert _comparable(fast) == _comparable(routed)


@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}]
)
async def test_a_json_body_without_a_json_content_type_is_told_so(
    clients: dict[str, httpx.AsyncClient], headers: dict[str, str]
) -> None:
    # `curl -d` without -H sends form-urlencoded; pydantic's "valid dictionary" message misled.
    for client in clients.values():
        response = await client.post("/v1/completions", content=b'{"model": "tiny", "prompt": "x"}', headers=headers)
        assert response.status_code == 400
        assert "Content-Type: application/json" in response.json()["error"]["message"]
