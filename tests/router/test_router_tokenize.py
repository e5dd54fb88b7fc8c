"""POST /tokenize and /detokenize: the router's own tokenizer and chat template, no worker involved."""

from __future__ import annotations

import httpx
import pytest
from pdserve import LLM
from router_helpers import MODEL, assert_error

MESSAGES = [{"role": "user", "content": "Say hi"}]


async def test_tokenize_matches_what_generation_uses(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    text = "Hello there, tokens"
    response = await client.post("/tokenize", json={"model": MODEL, "prompt": text})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference_llm.tokenizer(text)["input_ids"]
    assert body["tokens"] == expected and body["count"] == len(expected)
    assert body["max_model_len"] == reference_llm.engine.max_model_len
    # The completion of the same prompt reports the same count.
    usage = (await client.post("/v1/completions", json={"prompt": text, "max_tokens": 1})).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]
    plain = (await client.post("/tokenize", json={"prompt": text, "add_special_tokens": False})).json()
    assert plain["tokens"] == reference_llm.tokenizer(text, add_special_tokens=False)["input_ids"]


async def test_tokenize_messages_like_chat(client: httpx.AsyncClient) -> None:
    tokens = (await client.post("/tokenize", json={"messages": MESSAGES})).json()["tokens"]
    chat = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == len(tokens)
    text = (await client.post("/detokenize", json={"tokens": tokens})).json()["prompt"]
    assert "Say hi" in text
    # With tools, as chat completions render them.
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"messages": MESSAGES, "tools": [tool]}
    with_tools = (await client.post("/tokenize", json=body)).json()["tokens"]
    chat = await client.post("/v1/chat/completions", json={**body, "tool_choice": "none", "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == len(with_tools)


async def test_detokenize_round_trip(client: httpx.AsyncClient) -> None:
    tokens = (await client.post("/tokenize", json={"prompt": "héllo wörld 🙂"})).json()["tokens"]
    response = await client.post("/detokenize", json={"model": MODEL, "tokens": tokens})
    assert response.status_code == 200
    assert response.json()["prompt"].endswith("héllo wörld 🙂")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "messages": MESSAGES}, "prompt"),
        ("/tokenize", {"prompt": ""}, "prompt"),
        ("/tokenize", {"prompt": "x", "model": "other"}, "model"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/detokenize", {"tokens": [1 << 30]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {}, "tokens"),
    ],
)
async def test_bad_bodies_are_clear_errors(client: httpx.AsyncClient, path: str, body: dict, param: str) -> None:
    response = await client.post(path, json=body)
    assert response.status_code in (400, 404), response.text
    assert_error(response, response.status_code, param)
