"""Runs an LLMEngine on its own thread so the event loop (NATS, UCX, HTTP) never blocks.

Every engine access happens on one thread: steps, and the commands (add, abort, export,
import) that callers `submit`. Commands wait in an inbox that the engine thread drains right
before each step, so submitting never waits for a step to finish (an ack goes out at once)
and the engine needs no locks.

The engine thread sleeps on a condition that `submit` signals, so a request added to an idle
engine starts its prefill at once, on the other core, while the event loop is still sending the
task's ack. (An earlier version ran each step through `run_in_executor` from an event-loop task:
the step then waited for that task's turn and an executor hand-off, about 0.2-0.3 ms per request
in the router-overhead trace, docs/benchmarks.md.) A step's outputs go to the event loop, and
the next step starts only once they are handled there and the tasks that handling started have
had their first turn: a prefill worker's hand-off asks for the KV export before the next step,
and the engine never runs ahead of what the loop can publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from pdserve.engine.llm_engine import LLMEngine
from pdserve.outputs import RequestOutput

T = TypeVar("T")
log = structlog.get_logger("pdserve.engine_loop")

OutputHandler = Callable[[list[RequestOutput]], Awaitable[None]]

_JOIN_TIMEOUT_S = 30.0  # a step in progress when stopping (a long prefill) gets this long to end


class EngineLoop:
    def __init__(self, engine: LLMEngine, on_outputs: OutputHandler) -> None:
        self.engine = engine
        self.on_outputs = on_outputs
        self._inbox: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._work = threading.Condition()  # guards _inbox and _stopping; signalled on both
        self._handled = threading.Event()  # the loop is done with the last step's outputs
        self._outputs: asyncio.Queue[list[RequestOutput]] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self._handler: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.steps = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handler = asyncio.create_task(self._handle_outputs(), name="engine-outputs")
        self._thread = threading.Thread(target=self._run, name="pdserve-engine", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue fn to run on the engine thread before the next step; returns its future."""
        if self._loop is None:
            raise RuntimeError("EngineLoop.start() first")
        future: asyncio.Future[T] = self._loop.create_future()
        with self._work:
            if self._stopping:
                raise RuntimeError("the engine loop is stopped")
            self._inbox.append((fn, future))
            self._work.notify()
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the engine thread (before the next step) and return its result."""
        return await self.submit(fn)

    # -- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._work:
                while not self._stopping and not self._inbox and not self.engine.has_unfinished():
                    self._work.wait()
                if self._stopping:
                    return
            try:
                outputs = self._step()
            except Exception:
                # A failed step must not kill the worker silently: log it and fail its requests.
                log.exception("engine step failed")
                outputs = self._abort_all()
            self.steps += 1
            if outputs:
                self._handled.clear()
                self._to_loop(self._outputs.put_nowait, outputs)
                self._handled.wait()

    def _step(self) -> list[RequestOutput]:
        self._drain_inbox()
        if not self.engine.has_unfinished():
            return []
        return self.engine.step()

    def _drain_inbox(self) -> None:
        """Run queued commands, hand results back to the event loop."""
        with self._work:
            work, self._inbox = self._inbox, []
        for fn, future in work:
            try:
                result = fn()
            except BaseException as exc:  # delivered to the caller, not swallowed
                self._to_loop(_set_exception, future, exc)
            else:
                self._to_loop(_set_result, future, result)

    def _abort_all(self) -> list[RequestOutput]:
        try:
            for request_id in list(self.engine.requests):
                self.engine.abort_request(request_id)
            return self.engine.step()
        except Exception:
            log.exception("aborting the engine's requests failed")
            return []

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed under us while stopping
            self._loop.call_soon_threadsafe(fn, *args)

    # -- the event loop -----------------------------------------------------------------------

    async def _handle_outputs(self) -> None:
        while True:
            outputs = await self._outputs.get()
            try:
                await self.on_outputs(outputs)
            except Exception:
                log.exception("output handler failed")
            # One turn for the tasks the handler started (a hand-off asking for its KV export),
            # so their commands are in the inbox before the next step.
            await asyncio.sleep(0)
            self._handled.set()

    async def stop(self) -> None:
        with self._work:
            self._stopping = True
            pending, self._inbox = self._inbox, []
            self._work.notify()
        self._handled.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, _JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("engine step still running at stop; leaving it", timeout_s=_JOIN_TIMEOUT_S)
        if self._handler is not None:
            self._handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._handler
        for _, future in pending:
            if not future.done():
                future.cancel()


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
