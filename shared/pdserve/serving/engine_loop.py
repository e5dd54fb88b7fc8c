"""Runs an LLMEngine on its own thread so the event loop (NATS, UCX, HTTP) never blocks.

Every engine access goes through one single-thread executor: steps and calls (add, abort,
export, import) run one after another on that thread, so the engine needs no locks, and the
asyncio side only ever awaits futures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from pdserve.engine.llm_engine import LLMEngine
from pdserve.outputs import RequestOutput

T = TypeVar("T")
log = structlog.get_logger("pdserve.engine_loop")

OutputHandler = Callable[[list[RequestOutput]], Awaitable[None]]


class EngineLoop:
    def __init__(self, engine: LLMEngine, on_outputs: OutputHandler) -> None:
        self.engine = engine
        self.on_outputs = on_outputs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdserve-engine")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.steps = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the engine thread between steps and return its result."""
        result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._wake.set()
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self.engine.has_unfinished():
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self.engine.step)
            except Exception:
                # A failed step must not kill the worker silently: log it and fail its requests.
                log.exception("engine step failed")
                outputs = await loop.run_in_executor(self._executor, self._abort_all)
            self.steps += 1
            if outputs:
                try:
                    await self.on_outputs(outputs)
                except Exception:
                    log.exception("output handler failed")
            # Let NATS, UCX and HTTP callbacks run between steps.
            await asyncio.sleep(0)

    def _abort_all(self) -> list[RequestOutput]:
        for request_id in list(self.engine.requests):
            self.engine.abort_request(request_id)
        return self.engine.step()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)
