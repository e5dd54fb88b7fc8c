"""SIGTERM: requests in flight finish, then serve() returns to the caller (who closes the backend)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
from fastapi import FastAPI
from pdserve.services.router import RouterServer
from router_helpers import sse_data


async def test_sigterm_drains_streams_and_returns(app: FastAPI) -> None:
    server = RouterServer(app, "127.0.0.1", 0, graceful_shutdown_s=10)
    serving = asyncio.create_task(server.serve())
    await server.wait_started()
    body = {"prompt": "Hi", "max_tokens": 40, "ignore_eos": True, "stream": True}
    text = ""
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        async for part in response.aiter_text():
            if not text:
                os.kill(os.getpid(), signal.SIGTERM)  # mid-stream
            text += part
    events = sse_data(text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    await asyncio.wait_for(serving, 5)  # returned instead of killing the process
    # The signal handler is gone again.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
