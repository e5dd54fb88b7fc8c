"""The official openai client against the router on a real socket."""

from __future__ import annotations

from typing import Any, Literal

import openai
import pydantic
import pytest
from router_helpers import MODEL

MESSAGES: Any = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def oai(live_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key="unused", max_retries=0)


async def test_completions(oai: openai.AsyncOpenAI) -> None:
    result = await oai.completions.create(model=MODEL, prompt="Hello", max_tokens=8, temperature=0.0)
    assert result.object == "text_completion"
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage is not None and result.usage.prompt_tokens == 5

    stream = await oai.completions.create(
        model=MODEL, prompt="Hello", max_tokens=8, temperature=0.0, stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    usage = None
    async for event in stream:
        parts.extend(choice.text for choice in event.choices)
        usage = event.usage or usage
    assert "".join(parts) == result.choices[0].text
    assert usage is not None and usage.completion_tokens == result.usage.completion_tokens


async def test_chat_completions(oai: openai.AsyncOpenAI) -> None:
    result = await oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.0)
    assert result.object == "chat.completion"
    message = result.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)

    stream: Any = await oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.0, stream=True
    )
    parts, finish = [], None
    async for event in stream:
        for choice in event.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == message.content
    assert finish == result.choices[0].finish_reason


async def test_models_and_errors(oai: openai.AsyncOpenAI) -> None:
    models = await oai.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.completions.create(model=MODEL, prompt="Hello", max_tokens=0)
    assert "max_tokens" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        await oai.completions.create(model="gpt-9", prompt="Hello")


async def test_top_logprobs_parse_in_the_clients_types(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0.0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None and logprobs.tokens is not None
    assert len(logprobs.top_logprobs) == len(logprobs.tokens)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    chat = await oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and all(len(entry.top_logprobs) == 3 for entry in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy: the best one was chosen


async def test_echo_scoring_through_the_client(oai: openai.AsyncOpenAI) -> None:
    """The request lm-eval's and OpenAI-era scoring scripts send: echo, max_tokens 0, logprobs."""
    result = await oai.completions.create(
        model=MODEL, prompt="Hello there", max_tokens=0, echo=True, logprobs=1, temperature=0.0
    )
    choice = result.choices[0]
    assert choice.text == "Hello there" and choice.logprobs is not None
    assert choice.logprobs.token_logprobs is not None and choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert result.usage is not None and result.usage.completion_tokens == 0


class Pet(pydantic.BaseModel):
    kind: Literal["cat", "dog"]
    age: int | None


class Answer(pydantic.BaseModel):
    verdict: Literal["yes", "no"]
    ok: bool
    pet: Pet


async def test_structured_output_parses_into_a_pydantic_model(oai: openai.AsyncOpenAI) -> None:
    """`chat.completions.parse` sends the model's strict JSON schema ($defs, $ref, enums, anyOf
    with null) and reads the reply back into the model."""
    for temperature in (0.0, 1.0):
        result = await oai.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Answer, max_tokens=400, temperature=temperature, seed=1
        )
        choice = result.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Answer), choice.message.content


class GetWeather(pydantic.BaseModel):
    """Current weather in a city."""

    city: Literal["Paris", "Rome"]
    celsius: bool


async def test_forced_tool_calls_parse_into_pydantic_models(oai: openai.AsyncOpenAI) -> None:
    """A forced call's arguments come back in `tool_calls` and parse into the tool's model, as
    `parse` with `pydantic_function_tool` expects, streamed or not."""
    tool = openai.pydantic_function_tool(GetWeather)
    for choice in ("required", {"type": "function", "function": {"name": "GetWeather"}}):
        request: Any = {"model": MODEL, "messages": MESSAGES, "tools": [tool], "tool_choice": choice, "seed": 2}
        result = await oai.chat.completions.parse(**request, max_tokens=300)
        [call, *_] = result.choices[0].message.tool_calls or [None]
        assert call is not None and call.function.name == "GetWeather"
        assert isinstance(call.function.parsed_arguments, GetWeather)
        async with oai.chat.completions.stream(**request, max_tokens=300) as stream:
            final = await stream.get_final_completion()
        [again, *_] = final.choices[0].message.tool_calls or [None]
        assert again is not None and again.function.parsed_arguments == call.function.parsed_arguments


async def test_vllm_extensions_through_extra_body(oai: openai.AsyncOpenAI) -> None:
    """What vLLM users send through the openai client's extra_body, and read back from model_extra."""
    plain = await oai.completions.create(
        model=MODEL, prompt="Hello", max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
    )
    word = plain.choices[0].text[3:5]
    result = await oai.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=12,
        temperature=0.0,
        stop=[plain.choices[0].text[8:10]],
        extra_body={"ignore_eos": True, "bad_words": [word], "prompt_logprobs": 1, "priority": 0},
    )
    choice = result.choices[0]
    extra = choice.model_extra or {}
    assert word not in choice.text
    assert len(extra["prompt_logprobs"]) == 5 and extra["prompt_logprobs"][0] is None
    assert choice.finish_reason == "length" or extra["stop_reason"] == plain.choices[0].text[8:10]
    with pytest.raises(openai.BadRequestError, match="scheduling-policy"):
        await oai.completions.create(model=MODEL, prompt="Hello", max_tokens=2, extra_body={"priority": 3})
