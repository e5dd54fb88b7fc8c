"""All choices of one HTTP request (prompts x n): started together, admitted together, closed together.

The router waits for every choice's first delta before answering, so a refusal (no capacity, a
bad prompt) is still a proper HTTP status rather than a broken stream. After that, deltas of all
choices are read concurrently (one task per choice) and handed out in arrival order.

A request with one choice (nearly all of them) is read directly, without those tasks and their
queue: each task costs its creation, a loop iteration per delta and a cancel, which measurably
added to the router's latency per request (docs/benchmarks.md, router overhead).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pdserve.services.router.choice_stream import ChoiceStream, TokenDelta
from pdserve.services.router.errors import ApiError
from pdserve.services.router.metrics import RouterMetrics
from pdserve.serving.backend import Backend, GenerateRequest

_Item = tuple[ChoiceStream, TokenDelta | None] | Exception


class ChoiceGroup:
    def __init__(self, choices: list[ChoiceStream], metrics: RouterMetrics) -> None:
        self.choices = choices
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pumps: list[asyncio.Task[None]] | None = None
        self._running = len(choices)
        self._closed = False
        self._started = time.perf_counter()  # the choices' requests go to the backend now

    @classmethod
    def start(
        cls, backend: Backend, requests: Sequence[tuple[int, GenerateRequest]], metrics: RouterMetrics
    ) -> ChoiceGroup:
        """One backend request per (prompt index, request), choice indices in the given order."""
        choices = [
            ChoiceStream(index, prompt_index, request, backend.generate(request))
            for index, (prompt_index, request) in enumerate(requests)
        ]
        return cls(choices, metrics)

    async def wait_first(self) -> None:
        """Wait until every choice has its first delta. Raises the first ApiError (the caller closes)."""
        if len(self.choices) == 1:
            await self.choices[0].peek()
            return
        tasks = [asyncio.create_task(choice.peek()) for choice in self.choices]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise next((e for e in errors if isinstance(e, ApiError)), errors[0])

    async def next(self) -> tuple[ChoiceStream, TokenDelta] | None:
        """The next delta of any choice, in arrival order; None once every choice has finished."""
        if len(self.choices) == 1:
            return await self._next_single()
        return await self._next_any()

    async def _next_single(self) -> tuple[ChoiceStream, TokenDelta] | None:
        choice = self.choices[0]
        delta = await choice.next()
        if delta is None:
            return None
        self._observe(choice, delta)
        return choice, delta

    async def _next_any(self) -> tuple[ChoiceStream, TokenDelta] | None:
        if self._pumps is None:
            self._pumps = [asyncio.create_task(self._pump(choice)) for choice in self.choices]
        while self._running:
            item = await self._queue.get()
            if isinstance(item, Exception):
                raise item
            choice, delta = item
            if delta is None:
                self._running -= 1
                continue
            self._observe(choice, delta)
            return choice, delta
        return None

    def _observe(self, choice: ChoiceStream, delta: TokenDelta) -> None:
        """Count the delta's tokens and time it (latency_histogram.py)."""
        metrics = self.metrics
        metrics.generated_tokens += len(delta.token_ids)
        now = time.perf_counter()
        if choice.last_delta_at is None:
            metrics.time_to_first_token.observe(now - self._started)
        else:
            metrics.inter_token_latency.observe(now - choice.last_delta_at)
        choice.last_delta_at = now
        if delta.finish_reason is not None:
            metrics.e2e_request_latency.observe(now - self._started)
            metrics.finished_choices[delta.finish_reason] += 1

    def ready(self) -> bool:
        """True if the next `next()` returns without waiting for the backend: every choice has
        finished, or the only one has a delta in hand. False when unsure."""
        if all(choice.finished for choice in self.choices):
            return True
        return len(self.choices) == 1 and self._pumps is None and self.choices[0].has_delta_in_hand()

    async def run_to_end(self) -> None:
        """Read every choice to its end (the non-streaming path); results stay on the choices."""
        while await self.next() is not None:
            pass

    async def aclose(self) -> None:
        """Stop reading and cancel every choice still running on the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pumps is None and all(choice.finished for choice in self.choices):
            # Nothing runs on the backend any more: closing only ends the finished streams,
            # which no cancel can interrupt halfway, so the shield's task is not needed.
            for choice in self.choices:
                await choice.aclose()
            return
        # Shielded: a cancelled handler must still free the requests' KV on the workers.
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        for task in self._pumps or []:
            task.cancel()
        await asyncio.gather(*(self._pumps or []), return_exceptions=True)
        await asyncio.gather(*(choice.aclose() for choice in self.choices))

    async def _pump(self, choice: ChoiceStream) -> None:
        try:
            while (delta := await choice.next()) is not None:
                self._queue.put_nowait((choice, delta))
            self._queue.put_nowait((choice, None))
        except Exception as exc:
            self._queue.put_nowait(exc)
