"""Router fixtures: one tiny-model engine for the session, a fresh LocalBackend and app per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pdserve import LLM
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import RouterServer, create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, wait_until

# 512 blocks of 16 tokens: room for the 2048-token context and a few concurrent requests,
# without the default 1 GiB pool.
KV_BLOCKS = 512


@pytest.fixture(scope="session")
def engine() -> LLMEngine:
    return LLMEngine.from_model(None, config=EngineConfig(num_kv_blocks=KV_BLOCKS))


@pytest.fixture(scope="session")
def reference_llm() -> LLM:
    """A second, independent engine: what the router returns must match it token for token."""
    return LLM(num_kv_blocks=KV_BLOCKS)


@pytest.fixture
async def backend(engine: LLMEngine) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(engine)
    await backend.start()
    yield backend
    # Every test leaves the engine as it found it: no request alive, no KV block held.
    await wait_until(lambda: not engine.requests and engine.kv_blocks_used == 0, 2.0, "the engine to be idle")
    await backend.close()


@pytest.fixture
def app(backend: LocalBackend, engine: LLMEngine) -> FastAPI:
    return create_app(backend, engine.tokenizer, model_name=MODEL)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        yield client


@pytest.fixture
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The app served by uvicorn on a free local port (real sockets: disconnects, the openai client)."""
    server = RouterServer(app, "127.0.0.1", 0, graceful_shutdown_s=2)
    task = asyncio.create_task(server.serve(handle_signals=False))
    await server.wait_started()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    await task
