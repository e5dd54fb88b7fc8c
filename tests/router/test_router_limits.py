"""Input limits: what /openapi.json publishes is what the router enforces, and edge values never fail."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, assert_error

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def app(backend: LocalBackend, engine: LLMEngine) -> FastAPI:
    return create_app(backend, engine.tokenizer, model_name=MODEL, max_tokens_limit=5, max_n=3)


async def test_schema_publishes_this_servers_limits(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    for fields in (completion, chat):
        assert (fields["n"]["minimum"], fields["n"]["maximum"]) == (1, 3)
        assert (fields["temperature"]["anyOf"][0]["minimum"], fields["temperature"]["anyOf"][0]["maximum"]) == (0, 100)
        assert fields["stop"]["anyOf"][1]["maxItems"] == 16
    assert completion["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 5}  # 0: echo
    assert chat["max_completion_tokens"]["anyOf"][0]["maximum"] == 5
    assert completion["logprobs"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 20}
    assert chat["top_logprobs"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 20}
    assert completion["prompt"]["anyOf"][0] == {"type": "string", "minLength": 1}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "x", "n": 4}, "n", ["at most 3"]),
        ({"prompt": "x", "max_tokens": 6}, "max_tokens", ["at most 5"]),
        ({"prompt": "x", "stop": ["a"] * 17}, "stop", ["at most 16"]),
        ({"prompt": "x", "stop": "a" * 257}, "stop", ["at most 256"]),
        ({"prompt": ["x"] * 257}, "prompt", ["at most 256"]),
        ({"prompt": ["x"] * 100, "n": 3}, "prompt", ["300 choices"]),
        ({"prompt": [[1], []]}, "prompt", ["prompt.1: must not be empty"]),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens", []),
        ({"prompt": "x", "top_p": 1.5}, "top_p", []),
        ({"prompt": "x", "temperature": -0.1}, "temperature", []),
    ],
)
async def test_completion_limits(client: httpx.AsyncClient, body: dict, param: str, words: list[str]) -> None:
    assert_error(await client.post("/v1/completions", json=body), 400, param, *words)


async def test_chat_limits(client: httpx.AsyncClient) -> None:
    over = {"messages": USER, "max_completion_tokens": 2, "max_tokens": 50}
    assert_error(await client.post("/v1/chat/completions", json=over), 400, "max_tokens", "at most 5")
    no_content = {"messages": [{"role": "user"}]}
    assert_error(await client.post("/v1/chat/completions", json=no_content), 400, "messages")
    # An assistant turn may leave its content out (a prefilled turn).
    ok = {"messages": [*USER, {"role": "assistant", "content": None}, *USER], "max_tokens": 1}
    assert (await client.post("/v1/chat/completions", json=ok)).status_code == 200


async def test_whole_number_floats_are_integers(client: httpx.AsyncClient) -> None:
    # JSON Schema's "integer" includes 2.0, and some clients serialize every number as a float.
    body = {"prompt": [72.0, 105.0], "max_tokens": 2.0, "n": 2.0, "seed": 7.0, "ignore_eos": True}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2, 4)


async def test_default_max_tokens_fits_the_server_limit_and_the_context(
    client: httpx.AsyncClient, backend: LocalBackend
) -> None:
    # OpenAI's default of 16 would exceed this server's limit of 5: the default gives way.
    response = await client.post("/v1/completions", json={"prompt": "x", "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5
    # ...and so it does to a prompt that leaves room for fewer tokens than the default.
    room = 3
    prompt = [65] * (backend.max_model_len - room)
    response = await client.post("/v1/completions", json={"prompt": prompt, "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == room


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-45, 1.0), (1e-30, 1.0), (1.0, 5e-324), (100.0, 1e-300)])
async def test_extreme_sampling_values_are_served(client: httpx.AsyncClient, temperature: float, top_p: float) -> None:
    # Found by the fuzzer: in float32 these turned the probabilities into NaN and failed the engine step.
    body = {"prompt": "hi", "max_tokens": 2, "temperature": temperature, "top_p": top_p}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
