"""Tool calls in chat completions: forced calls (tool_choice "required" or a named function)
whose arguments satisfy the function's parameters, streamed or not; refusals that say what to do."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
import pytest
from pdserve import LLM
from router_helpers import assert_error, sse_data

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}, "unit": {"$ref": "#/$defs/Unit"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
            "$defs": {"Unit": {"enum": ["c", "f"]}},
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc": {"type": "boolean"}},
            "required": ["utc"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
BASE: dict[str, Any] = {"messages": MESSAGES, "tools": TOOLS, "max_tokens": 300, "temperature": 1.0}


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={**BASE, **body})


def check_arguments(name: str, arguments: str) -> None:
    assert jsonschema_rs.validator_for(PARAMETERS[name]).is_valid(json.loads(arguments)), (name, arguments)


def streamed_calls(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """Tool calls put back together from stream deltas (by index), and the finish reason."""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for event in sse_data(text)[:-1]:
        for choice in event["choices"]:
            finish = choice["finish_reason"] or finish
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.get("id") or call["id"]
                call["name"] = delta["function"].get("name") or call["name"]
                call["arguments"] += delta["function"].get("arguments") or ""
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("seed", [1, 2])
async def test_named_tool_choice(client: httpx.AsyncClient, seed: int) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    response = await post(client, tool_choice=choice, seed=seed)
    assert response.status_code == 200, response.text
    [out] = response.json()["choices"]
    message = out["message"]
    assert message["content"] is None and out["finish_reason"] == "stop"
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    check_arguments("get_weather", call["function"]["arguments"])
    # Streamed: the id and name first, then the arguments in pieces; the same arguments.
    stream = await post(client, tool_choice=choice, seed=seed, stream=True)
    [again], finish = streamed_calls(stream.text)
    assert finish == "stop" and again["name"] == "get_weather" and again["id"].startswith("call_")
    assert again["arguments"] == call["function"]["arguments"]
    assert "content" not in sse_data(stream.text)[0]["choices"][0]["delta"]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_required_tool_choice(client: httpx.AsyncClient, seed: int) -> None:
    response = await post(client, tool_choice="required", seed=seed)
    assert response.status_code == 200, response.text
    [out] = response.json()["choices"]
    assert out["message"]["content"] is None and out["finish_reason"] == "tool_calls"
    calls = out["message"]["tool_calls"]
    assert calls and len({c["id"] for c in calls}) == len(calls)
    for call in calls:
        check_arguments(call["function"]["name"], call["function"]["arguments"])
    stream = await post(client, tool_choice="required", seed=seed, stream=True)
    again, finish = streamed_calls(stream.text)
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in again] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    one = (await post(client, tool_choice="required", seed=seed, parallel_tool_calls=False)).json()
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1


async def test_tool_choice_none_is_plain_text_with_tools_in_the_prompt(
    client: httpx.AsyncClient, reference_llm: LLM
) -> None:
    body = (await post(client, tool_choice="none", max_tokens=4, return_token_ids=True)).json()
    [out] = body["choices"]
    assert isinstance(out["message"]["content"], str) and "tool_calls" not in out["message"]
    expected = reference_llm.tokenizer.apply_chat_template(
        MESSAGES, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert out["prompt_token_ids"] == list(expected)


async def test_a_conversation_with_calls_and_results(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    """Assistant turns with tool_calls and tool messages reach the template; arguments as objects."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"utc": true}'}}
    messages = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "content": "12:00", "tool_call_id": "call_1"})
    response = await post(client, messages=messages, tool_choice="none", max_tokens=2, return_token_ids=True)
    assert response.status_code == 200, response.text
    rendered = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{**call, "function": {"name": "get_time", "arguments": {"utc": True}}}],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
    ]
    expected = reference_llm.tokenizer.apply_chat_template(
        rendered, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert response.json()["choices"][0]["prompt_token_ids"] == list(expected)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "tool_choice", "'auto'"),  # the default with tools
        ({"tool_choice": "auto"}, "tool_choice", "'required'"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no tool named"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools", "distinct"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, None, "exclude each other"),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "bad name"}}]}, None, ""),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "multipleOf": 2}}}
                ],
            },
            "tool_choice",
            "multipleOf",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", ""),  # no tool_call_id
    ],
)
async def test_refusals(client: httpx.AsyncClient, body: dict[str, Any], param: str | None, words: str) -> None:
    assert_error(await post(client, **body), 400, param, words)


def test_every_one_of_many_tools_can_be_called() -> None:
    """The "required" grammar follows every tool at once until the name decides, with the
    parameters written first or last."""
    from pdserve.engine.json_schema import compiled_schema, schema_text
    from pdserve.engine.schema_grammar import SchemaState
    from pdserve.services.router.api_requests import MAX_TOOLS, ChatCompletionRequest
    from pdserve.services.router.tool_calls import ToolPlan

    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "parameters": {"type": "object", "properties": {"x": {"const": i}}, "required": ["x"]},
            },
        }
        for i in range(MAX_TOOLS)
    ]
    plan = ToolPlan.of(ChatCompletionRequest.model_validate({**BASE, "tools": tools, "tool_choice": "required"}))
    assert plan.schema is not None
    start = SchemaState.start(compiled_schema(schema_text(plan.schema)))
    for i in (0, MAX_TOOLS - 1):
        for text in (
            f'[{{"name": "tool_{i}", "parameters": {{"x": {i}}}}}]',
            f'[{{"parameters": {{"x": {i}}}, "name": "tool_{i}"}}]',
        ):
            state = start.feed(text)
            assert state is not None and state.complete, text
            assert [c.function.name for c in plan.calls(text) or []] == [f"tool_{i}"]
        assert start.feed(f'[{{"name": "tool_{i}", "parameters": {{"x": {i + 1}}}}}]') is None
