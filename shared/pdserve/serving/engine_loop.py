"""Runs an LLMEngine on its own thread so the event loop (NATS, UCX, HTTP) never blocks.

Every engine access happens on one thread: steps, and the commands (add, abort, export,
import) that callers `submit`. Commands wait in an inbox that the engine thread drains right
before each step, so submitting never waits for a step to finish (an ack goes out at once)
and the engine needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
        self._inbox: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._inbox_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.steps = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue fn to run on the engine thread before the next step; returns its future."""
        assert self._loop is not None, "EngineLoop.start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        with self._inbox_lock:
            self._inbox.append((fn, future))
        self._wake.set()
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the engine thread (before the next step) and return its result."""
        return await self.submit(fn)

    def _drain_inbox(self) -> None:
        """On the engine thread: run queued commands, hand results back to the event loop."""
        with self._inbox_lock:
            work, self._inbox = self._inbox, []
        assert self._loop is not None
        for fn, future in work:
            try:
                result = fn()
            except BaseException as exc:  # delivered to the caller, not swallowed
                self._loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                self._loop.call_soon_threadsafe(_set_result, future, result)

    def _step(self) -> list[RequestOutput]:
        self._drain_inbox()
        if not self.engine.has_unfinished():
            return []
        return self.engine.step()

    def _has_work(self) -> bool:
        with self._inbox_lock:
            queued = bool(self._inbox)
        return queued or self.engine.has_unfinished()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._has_work():
                self._wake.clear()
                if not self._has_work():
                    await self._wake.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._step)
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
        with self._inbox_lock:
            pending, self._inbox = self._inbox, []
        for _, future in pending:
            if not future.done():
                future.cancel()


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
