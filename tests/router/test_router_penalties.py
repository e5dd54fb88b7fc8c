"""Penalties and logit_bias over HTTP: passed to the engine as sent, bad values a clear 400."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pdserve import LLM, SamplingParams
from router_helpers import MODEL, assert_error

PROMPT = "Once upon a time"


async def token_ids(client: httpx.AsyncClient, path: str = "/v1/completions", **body: Any) -> list[int]:
    request = {"model": MODEL, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    if path == "/v1/completions":
        request["prompt"] = PROMPT
    else:
        request["messages"] = [{"role": "user", "content": PROMPT}]
    response = await client.post(path, json={**request, **body})
    assert response.status_code == 200, response.text
    return list(response.json()["choices"][0]["token_ids"])


@pytest.mark.parametrize(
    "fields",
    [
        {"repetition_penalty": 1.4},
        {"presence_penalty": 1.5, "frequency_penalty": 0.5},
        {"logit_bias": {"65": 100}},
        {"allowed_token_ids": [65, 66, 200]},
    ],
)
async def test_adjustments_reach_the_engine(client: httpx.AsyncClient, reference_llm: LLM, fields: dict) -> None:
    got = await token_ids(client, **fields)
    ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    offline = {**fields, "logit_bias": {int(k): v for k, v in fields.get("logit_bias", {}).items()}}
    want = reference_llm.generate([ids], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, **offline))[
        0
    ].token_ids
    assert got == want
    assert got != await token_ids(client)  # and they changed the output
    if "allowed_token_ids" in fields:
        assert set(got) <= {65, 66, 200}
    if "logit_bias" in fields:
        assert got == [65] * 12
        assert await token_ids(client, "/v1/chat/completions", **fields) == [65] * 12


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 150}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, None),  # past the vocabulary: the worker says so
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, -2]}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, 99999999]}, None),  # past the vocabulary: the worker says so
    ],
)
async def test_bad_adjustments_are_400(client: httpx.AsyncClient, fields: dict, param: str | None) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, **fields})
    error = assert_error(response, 400, param)
    if param is None:
        assert "vocabulary" in error["message"]


async def test_min_tokens(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    eos = sorted(reference_llm.engine.stop_checker.eos_token_ids)
    eager = {str(t): 100 for t in eos}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 20, "temperature": 0, "logit_bias": eager}
    quick = (await client.post("/v1/completions", json={**body, "return_token_ids": True})).json()["choices"][0]
    assert len(quick["token_ids"]) == 1 and quick["finish_reason"] == "stop"
    held = (await client.post("/v1/completions", json={**body, "min_tokens": 4, "return_token_ids": True})).json()
    choice = held["choices"][0]
    assert len(choice["token_ids"]) == 5 and choice["finish_reason"] == "stop" and choice["token_ids"][-1] in eos
    too_many = await client.post("/v1/completions", json={**body, "max_tokens": 3, "min_tokens": 4})
    assert_error(too_many, 400, "min_tokens")


async def test_min_p_reaches_the_engine(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    """vLLM's min_p: the same seeded tokens as the offline engine with the same params."""
    sampled = {"temperature": 1.5, "seed": 5}
    got = await token_ids(client, min_p=0.2, **sampled)
    ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    params = SamplingParams(max_tokens=12, temperature=1.5, seed=5, min_p=0.2, ignore_eos=True)
    assert got == reference_llm.generate([ids], params)[0].token_ids
    assert got != await token_ids(client, **sampled)  # and it changed the output
    # min_p 1: only the likeliest token, in both endpoints
    greedy = await token_ids(client)
    assert await token_ids(client, min_p=1, **sampled) == greedy
    chat_greedy = await token_ids(client, "/v1/chat/completions")
    assert await token_ids(client, "/v1/chat/completions", min_p=1.0, **sampled) == chat_greedy
