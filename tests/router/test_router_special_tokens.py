"""vLLM's skip_special_tokens over HTTP, streamed and not, in both endpoints."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from router_helpers import MODEL

PAD = 258  # <|pad|>, a special token of the built-in tokenizer that is not eos


async def texts(client: httpx.AsyncClient, path: str, **fields: Any) -> tuple[str, str]:
    """(the whole text, the streamed deltas joined) of a request that is forced to write <|pad|> x 3."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    body |= {"logit_bias": {str(PAD): 100}, **fields}
    if path == "/v1/completions":
        body["prompt"] = "Hello"
    else:
        body["messages"] = [{"role": "user", "content": "Hello"}]
    reply = await client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    whole = choice["text"] if path == "/v1/completions" else choice["message"]["content"]
    streamed = ""
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line.removeprefix("data: "))["choices"]:
                    streamed += (c.get("text") if path == "/v1/completions" else c["delta"].get("content")) or ""
    return whole, streamed


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_special_tokens_kept_on_request(client: httpx.AsyncClient, path: str) -> None:
    assert await texts(client, path) == ("", "")
    assert await texts(client, path, skip_special_tokens=False) == ("<|pad|>" * 3,) * 2
    # stop strings see them too
    assert await texts(client, path, skip_special_tokens=False, stop=["><"]) == ("<|pad|",) * 2
