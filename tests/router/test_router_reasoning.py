"""--reasoning-parser: the model's <think> text as reasoning_content, apart from content."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pdserve.engine.llm_engine import LLMEngine
from pdserve.protocol import TokenChunk
from pdserve.services.router import create_app
from pdserve.services.router.reasoning import REASONING_PARSERS, ReasoningStream, split_reasoning
from pdserve.serving.backend import GenerateRequest
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, ScriptedBackend, chunk

CASES = [
    # (parser, reply, reasoning, content)
    ("deepseek_r1", "Let me see.\nIt is 4.</think>\n\nIt is 4.", "Let me see.\nIt is 4.", "\n\nIt is 4."),
    ("deepseek_r1", "<think>Hmm.</think>Four.", "Hmm.", "Four."),
    ("deepseek_r1", "Still thinking when max_tokens ran out", "Still thinking when max_tokens ran out", ""),
    ("deepseek_r1", "</think>Straight to it.", "", "Straight to it."),
    ("qwen3", "<think>\nSum: 2+2.\n</think>\n\nFour.", "\nSum: 2+2.\n", "\n\nFour."),
    ("qwen3", "\n<think>x</think>y", "x", "y"),
    ("qwen3", "Four, without thinking.", None, "Four, without thinking."),
    ("qwen3", "<thinking is not the tag", None, "<thinking is not the tag"),
    ("qwen3", "<think>cut short", "cut short", ""),
    ("qwen3", "a < b </think> c", None, "a < b </think> c"),
]


@pytest.mark.parametrize(("parser", "reply", "reasoning", "content"), CASES)
def test_split(parser: str, reply: str, reasoning: str | None, content: str) -> None:
    assert split_reasoning(parser, reply) == (reasoning, content)


@pytest.mark.parametrize(("parser", "reply", "reasoning", "content"), CASES)
def test_streamed_pieces_add_up_to_the_split(parser: str, reply: str, reasoning: str | None, content: str) -> None:
    """Cut anywhere (inside tags too), the pieces add up to the whole split and no tag leaks."""
    rng = random.Random(reply)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(reply)), min(len(reply) - 1, rng.randint(1, 6))))
        parts = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)], strict=True)]
        stream = ReasoningStream(parser)
        pieces = [p for part in parts for p in stream.push(part)] + stream.finish()
        assert "".join(t for k, t in pieces if k == "reasoning") == (reasoning or "")
        assert "".join(t for k, t in pieces if k == "content") == content
        if reasoning is not None:
            assert not any("<think>" in t or "</think>" in t for _, t in pieces)


def test_parsers_match_the_cli() -> None:
    from pdserve import cli

    assert cli.REASONING_PARSERS == REASONING_PARSERS


# -- over HTTP ---------------------------------------------------------------------------------

REPLY = "<think>2 and 2 make 4.</think>It is 4."


def scripted(engine: LLMEngine) -> ScriptedBackend:
    """A backend that answers every request with REPLY, a few characters per chunk (byte tokenizer)."""

    async def script(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        ids = list(REPLY.encode())
        n = len(request.prompt_token_ids)
        for start in range(0, len(ids), 3):
            last = start + 3 >= len(ids)
            extra: dict[str, Any] = {"finish_reason": "stop", "text": REPLY} if last else {}
            yield chunk(start, ids[start : start + 3], prompt_tokens=n, **extra)

    return ScriptedBackend(script)


@pytest.fixture
async def thinking_client(engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(scripted(engine), engine.tokenizer, model_name=MODEL, reasoning_parser="qwen3")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        yield client


async def test_reasoning_content_streamed_and_not(thinking_client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 40}
    message = (await thinking_client.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "2 and 2 make 4." and message["content"] == "It is 4."
    reply = await thinking_client.post("/v1/chat/completions", json={**body, "stream": True})
    deltas = [
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"]
        for line in reply.text.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "2 and 2 make 4."
    assert "".join(d.get("content") or "" for d in deltas) == "It is 4."
    assert all("reasoning_content" not in d or "content" not in d for d in deltas)
    # Once thinking, nothing says "content" before the answer starts (held tags and partial
    # characters give empty reasoning deltas).
    last_thought = next(i for i, d in enumerate(deltas) if d.get("reasoning_content") == ".")
    assert deltas[last_thought + 1] == {"reasoning_content": ""}  # "thi": part of </think>, held
    # The turn goes back with its thinking, as clients send it; the template decides what shows.
    history = [*body["messages"], {"role": "assistant", **message}, {"role": "user", "content": "Sure?"}]
    again = await thinking_client.post("/v1/chat/completions", json={**body, "messages": history})
    assert again.status_code == 200, again.text


async def test_grammars_hold_after_the_thinking(engine: LLMEngine) -> None:
    """response_format and guided decoding reach the workers with the parser, so the grammar holds
    after </think> (engine/thinking_grammar.py); a forced tool call's holds from the first token,
    and completions have no reasoning parser."""
    backend = scripted(engine)
    app = create_app(backend, engine.tokenizer, model_name=MODEL, reasoning_parser="qwen3")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 40}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        reply = await client.post("/v1/chat/completions", json={**body, "response_format": {"type": "json_object"}})
        message = reply.json()["choices"][0]["message"]
        assert message["reasoning_content"] == "2 and 2 make 4."
        await client.post("/v1/chat/completions", json={**body, "guided_regex": ".*"})
        await client.post("/v1/chat/completions", json=body)
        await client.post("/v1/chat/completions", json={**body, "tools": [tool], "tool_choice": "required"})
        completion = {"model": MODEL, "prompt": "x", "response_format": {"type": "json_object"}}
        await client.post("/v1/completions", json=completion)
    parsers = [request.params.reasoning_parser for request in backend.requests]
    assert parsers == ["qwen3", "qwen3", None, None, None]


async def test_the_real_model_through_each_parser(backend: LocalBackend, engine: LLMEngine) -> None:
    """The tiny model never writes </think>: qwen3 reads its reply as an answer, deepseek_r1 (whose
    template opens the block in the prompt) as thinking cut short."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
    texts = {}
    for parser in (None, "qwen3", "deepseek_r1"):
        app = create_app(backend, engine.tokenizer, model_name=MODEL, reasoning_parser=parser)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
            texts[parser] = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]
    plain = texts[None]["content"]
    assert texts["qwen3"] == {"role": "assistant", "content": plain}
    assert texts["deepseek_r1"] == {"role": "assistant", "reasoning_content": plain.lstrip(), "content": None}


def test_an_unknown_parser_is_refused(engine: LLMEngine) -> None:
    with pytest.raises(ValueError, match="reasoning_parser"):
        create_app(scripted(engine), engine.tokenizer, model_name=MODEL, reasoning_parser="o1")
