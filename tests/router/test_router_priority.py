"""The `priority` request field (vLLM's) over HTTP: checked, refused with a clear 400 by an engine
that serves first come, first served, and honoured by one that schedules by priority."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, wait_until

BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}


async def test_priority_is_checked(client: httpx.AsyncClient) -> None:
    ok = await client.post("/v1/completions", json={**BODY, "priority": 0})
    assert ok.status_code == 200
    refused = await client.post("/v1/completions", json={**BODY, "priority": 2})
    assert refused.status_code == 400
    assert "--scheduling-policy priority" in refused.json()["error"]["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": -1}
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 400
    for bad in (1 << 31, -(1 << 31) - 1, "1", 1.5, True):
        answer = await client.post("/v1/completions", json={**BODY, "priority": bad})
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["param"] == "priority"


@pytest.fixture(scope="module")
def priority_engine() -> LLMEngine:
    config = EngineConfig(num_kv_blocks=256, max_num_seqs=1, scheduling_policy="priority")
    return LLMEngine.from_model(None, dtype="float32", config=config)


@pytest.fixture
async def priority_client(priority_engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    backend = LocalBackend(priority_engine)
    await backend.start()
    app = create_app(backend, priority_engine.tokenizer, model_name=MODEL)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router", timeout=60) as client:
        yield client
    await wait_until(lambda: not priority_engine.requests, 5.0, "the engine to be idle")
    await backend.close()


async def test_the_more_urgent_request_is_served_first(
    priority_client: httpx.AsyncClient, priority_engine: LLMEngine
) -> None:
    done: dict[str, float] = {}

    async def send(name: str, priority: int, max_tokens: int) -> None:
        body = {**BODY, "max_tokens": max_tokens, "priority": priority}
        answer = await priority_client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == max_tokens
        done[name] = time.monotonic()

    # One sequence at a time: a long request runs while the two others wait their turn.
    running = asyncio.create_task(send("long", 0, 150))
    await wait_until(lambda: priority_engine.num_running == 1, 10.0, "the long request to run")
    later = asyncio.create_task(send("later", 10, 4))
    await wait_until(lambda: priority_engine.num_waiting == 1, 10.0, "the first to wait")
    urgent = asyncio.create_task(send("urgent", -10, 4))
    await asyncio.gather(running, later, urgent)
    assert done["long"] < done["urgent"] < done["later"], done
