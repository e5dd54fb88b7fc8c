"""tool_choice "auto" with `--tool-call-parser`: the calls a model writes on its own, in its
own format (Hermes's `<tool_call>` blocks, Llama 3's bare JSON), come back as `tool_calls`,
streamed or not."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.services.router.tool_parsers import (
    PARSERS,
    TOOL_CALL_PARSERS,
    ParsedCall,
    parse_hermes,
    parse_llama3_json,
    parse_mistral,
    parse_pythonic,
)
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, assert_error, sse_data
from test_router_tools import TOOLS, streamed_calls

TWO_CALLS = (
    "Let me look.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"utc": true}}\n</tool_call>'
)
EXPECTED = [
    ParsedCall("get_weather", '{"city": "Paris", "unit": "c"}'),
    ParsedCall("get_time", '{"utc": true}'),
]


def test_parse_hermes() -> None:
    assert parse_hermes(TWO_CALLS) == ("Let me look.", EXPECTED)
    assert parse_hermes('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>') == (
        None,
        [ParsedCall("f", '{"a": 1}')],
    )
    assert parse_hermes('<tool_call>{"name": "f", "arguments": "{}"}</tool_call>') == (None, [ParsedCall("f", "{}")])
    for text in ("no calls here", "<tool_call>{not json}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                 '<tool_call>{"name": "f"', "<tool_call>[1]</tool_call>"):  # fmt: skip
        assert parse_hermes(text) is None, text


LLAMA_CALLS = (
    '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
    '{"name": "get_time", "parameters": {"utc": true}}'
)


def test_parse_llama3_json() -> None:
    assert parse_llama3_json(" " + LLAMA_CALLS) == (None, EXPECTED)
    assert parse_llama3_json('{"name": "f", "arguments": {}}') == (None, [ParsedCall("f", "{}")])
    for text in ("Hello {", '{"name": "f"', '{"a": 1}', '{"name": "f", "parameters": {}} trailing', "[]"):
        assert parse_llama3_json(text) is None, text


MISTRAL_CALLS = (
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
    '{"name": "get_time", "arguments": {"utc": true}}]'
)
MISTRAL_V11_CALLS = (
    'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "c"}[TOOL_CALLS]get_time[ARGS]{"utc": true}'
)


def test_parse_mistral() -> None:
    """Both of Mistral's formats; ids of 9 letters and digits, as its chat templates demand."""
    for text, content in ((MISTRAL_CALLS, None), (MISTRAL_V11_CALLS, "Checking.")):
        parsed = parse_mistral(text)
        assert parsed is not None and parsed[0] == content
        assert [(c.name, c.arguments) for c in parsed[1]] == [(c.name, c.arguments) for c in EXPECTED]
        assert all(c.id is not None and len(c.id) == 9 and c.id.isalnum() for c in parsed[1])
    for text in ("no calls", "[TOOL_CALLS] [{bad}]", '[TOOL_CALLS] [{"arguments": {}}]', "[TOOL_CALLS]f[ARGS]{",
                 '[TOOL_CALLS] [{"name": "f"}] trailing', "[TOOL_CALLS]two words[ARGS]{}", "[TOOL_CALLS]"):  # fmt: skip
        assert parse_mistral(text) is None, text


PYTHONIC_CALLS = '[get_weather(city="Paris", unit="c"), get_time(utc=True)]'


def test_parse_pythonic() -> None:
    """Read by Python's parser, never run: only names, keyword arguments and literals are calls."""
    assert parse_pythonic(" " + PYTHONIC_CALLS + "\n") == (None, EXPECTED)
    assert parse_pythonic("[f(a=[1, {'b': None}], c=-2.5)]") == (
        None,
        [ParsedCall("f", '{"a": [1, {"b": null}], "c": -2.5}')],
    )
    assert parse_pythonic("[f()]") == (None, [ParsedCall("f", "{}")])
    for text in ("plain", "[]", "[1, 2]", "[f(1)]", "[f(**x)]", "[os.system(cmd='ls')]", "[f(a=open('x'))]",
                 "[f(a={1, 2})]", "[f(a=", "[f(a=1)] and more", "[" * 100_000):  # fmt: skip
        assert parse_pythonic(text) is None, text[:40]


@pytest.mark.parametrize(
    ("parser", "texts"),
    [
        ("hermes", [TWO_CALLS, "plain <tool text> < tool_call", "a <tool_call>{bad}</tool_call> b", "x <tool_call>{"]),
        ("llama3_json", [LLAMA_CALLS, "  " + LLAMA_CALLS, "Sure: {}", '{"name": "f"', "  plain text"]),
        ("mistral", [MISTRAL_CALLS, MISTRAL_V11_CALLS, "plain [TOOL text [TOOL_CALL", "x [TOOL_CALLS] not calls"]),
        ("pythonic", [PYTHONIC_CALLS, " " + PYTHONIC_CALLS, "[not calls]", "Sure: [f()]", "[f(a="]),
    ],
)
def test_stream_gives_the_same_calls_however_the_text_is_cut(parser: str, texts: list[str]) -> None:
    parse, stream_of = PARSERS[parser]
    rng = random.Random(0)
    for text in texts:
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(12, len(text) - 1))))
            stream, pieces = stream_of(), []
            for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
                pieces += stream.push(text[start:end])
            pieces += stream.finish()
            calls = [p for p in pieces if isinstance(p, ParsedCall)]
            content = "".join(p for p in pieces if isinstance(p, str))
            parsed = parse(text)
            if parsed is None:
                assert not calls and content == text  # nothing is lost or changed
            else:
                unnamed = [(c.name, c.arguments) for c in calls]  # mistral's ids are drawn afresh
                assert unnamed == [(c.name, c.arguments) for c in parsed[1]] and stream.calls == len(calls)
                assert content.strip() == (parsed[0] or "")


@pytest.fixture
async def backend(engine: LLMEngine) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(engine)
    await backend.start()
    yield backend
    await backend.close()


def client_for(backend: LocalBackend, engine: LLMEngine, parser: str | None) -> httpx.AsyncClient:
    app = create_app(backend, engine.tokenizer, model_name=MODEL, tool_call_parser=parser)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router")


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    base = {"messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS, "max_tokens": 200}
    return await client.post("/v1/chat/completions", json={**base, **body})


@pytest.mark.parametrize(
    ("parser", "written", "content"),
    [
        ("hermes", TWO_CALLS, "Let me look."),
        ("llama3_json", LLAMA_CALLS, None),
        ("mistral", MISTRAL_CALLS, None),
        ("mistral", MISTRAL_V11_CALLS, "Checking."),
        ("pythonic", PYTHONIC_CALLS, None),
    ],
)
async def test_auto_reads_the_calls_the_model_writes(
    backend: LocalBackend, engine: LLMEngine, parser: str, written: str, content: str | None
) -> None:
    """The real model writes a reply in the parser's format (held to that text by guided choice,
    since the tiny model would not write one by itself); the router reads the calls out of it."""
    async with client_for(backend, engine, parser) as client:
        held = {"structured_outputs": {"choice": [written]}, "temperature": 0.0}
        response = await chat(client, **held)
        assert response.status_code == 200, response.text
        [choice] = response.json()["choices"]
        message = choice["message"]
        assert choice["finish_reason"] == "tool_calls" and message["content"] == content
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
            (c.name, json.loads(c.arguments)) for c in EXPECTED
        ]
        if parser == "mistral":  # ids Mistral's template takes back in the next turn
            assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in message["tool_calls"])
            history = [{"role": "user", "content": "Weather?"}, message]
            history += [{"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in message["tool_calls"]]
            assert (await chat(client, messages=history, max_tokens=2)).status_code == 200
        stream = await chat(client, **held, stream=True)
        calls, finish = streamed_calls(stream.text)
        assert finish == "tool_calls"
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]
        ]
        events = [e for e in sse_data(stream.text)[:-1] if e["choices"]]
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert streamed.strip() == (content or "") and "<tool" not in streamed
        # A reply without calls stays plain text.
        plain = (await chat(client, tool_choice="auto", structured_outputs={"choice": ["No tools needed."]})).json()
        assert plain["choices"][0]["message"] == {"role": "assistant", "content": "No tools needed."}
        assert plain["choices"][0]["finish_reason"] == "stop"


async def test_mistral_keeps_special_tokens_in_the_text(engine: LLMEngine) -> None:
    """[TOOL_CALLS] is a special token: with tools and the mistral parser the workers keep special
    tokens in the text, as vLLM does; without tools, or with another parser, the request decides."""
    from router_helpers import ScriptedBackend, chunk

    async def script(request: Any) -> AsyncIterator[Any]:
        yield chunk(0, [65], finish_reason="stop", text="A", prompt_tokens=len(request.prompt_token_ids))

    for parser, with_tools, kept in (("mistral", True, True), ("mistral", False, False), ("hermes", True, False)):
        scripted = ScriptedBackend(script)
        app = create_app(scripted, engine.tokenizer, model_name=MODEL, tool_call_parser=parser)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
            body = {} if with_tools else {"tools": None}
            assert (await chat(client, **body)).status_code == 200
        assert scripted.requests[0].params.skip_special_tokens is not kept, (parser, with_tools)


async def test_auto_without_a_parser_says_how_to_get_one(backend: LocalBackend, engine: LLMEngine) -> None:
    async with client_for(backend, engine, None) as plain:
        assert_error(await chat(plain), 400, "tool_choice", "--tool-call-parser hermes")


def test_the_cli_offers_every_parser() -> None:
    from pdserve import cli

    assert cli.TOOL_CALL_PARSERS == TOOL_CALL_PARSERS
    for name in TOOL_CALL_PARSERS:
        assert cli.build_parser().parse_args(["router", "--tool-call-parser", name]).tool_call_parser == name
        assert cli.build_parser().parse_args(["up", "--tool-call-parser", name]).tool_call_parser == name
    with pytest.raises(ValueError, match="tool_call_parser"):
        create_app(None, None, model_name=MODEL, tool_call_parser="nope")  # type: ignore[arg-type]
