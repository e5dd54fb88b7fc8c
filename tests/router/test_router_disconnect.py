"""A client that goes away cancels its request: the engine frees its KV blocks at once."""

from __future__ import annotations

import asyncio

import httpx
from pdserve.engine.llm_engine import LLMEngine
from router_helpers import wait_until

LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0.0}


async def test_stream_disconnect_frees_kv(live_url: str, engine: LLMEngine, app) -> None:
    async with (
        httpx.AsyncClient(base_url=live_url, timeout=10) as client,
        client.stream(
            "POST", "/v1/completions", json={"prompt": "Tell me a story", "stream": True, **LONG}
        ) as response,
    ):
        assert response.status_code == 200
        lines = 0
        async for line in response.aiter_lines():
            lines += bool(line)
            if lines == 3:
                break
        assert engine.kv_blocks_used > 0  # still generating
        # Leaving the block closed the connection mid-stream.
    await wait_until(lambda: engine.kv_blocks_used == 0 and not engine.requests, 1.0, "the KV blocks to be freed")
    assert app.state.router.metrics.client_disconnects == 1


async def test_non_stream_disconnect_frees_kv(live_url: str, engine: LLMEngine) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        request = asyncio.create_task(
            client.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Tell me a story"}],
                    **LONG,
                },
            )
        )
        await wait_until(lambda: engine.kv_blocks_used > 0, 5.0, "the request to start")
        await asyncio.sleep(0.1)
        request.cancel()  # closes the connection
    await wait_until(lambda: engine.kv_blocks_used == 0 and not engine.requests, 1.0, "the KV blocks to be freed")
