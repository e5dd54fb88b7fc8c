"""One choice of a request: a backend request whose chunks are read once each, in output order.

Chunks can arrive twice (a retried publish) or out of order: the prefill worker publishes the
first token and the decode worker the rest, on the same subject but from different connections,
and NATS orders messages per publisher only. `index` (the output position of a chunk's first
token) puts them back in order. A stream that ends with tokens still missing is an internal error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from pdserve.errors import ProtocolError
from pdserve.protocol import TokenChunk
from pdserve.protocol.top_logprobs import TopLogprobs, top_from_wire
from pdserve.services.router.errors import ApiError, backend_error, internal_error
from pdserve.serving.backend import GenerateRequest

log = structlog.get_logger("pdserve.router.choice")

# The backend answers a passed deadline with a 504 chunk; the router waits this much longer
# before giving up on the backend itself.
DEADLINE_GRACE_S = 1.0
# Chunks held while waiting for an earlier one; a stream this far out of order is broken.
MAX_CHUNKS_AHEAD = 4096
# What a successful finish can be in OpenAI's API ("abort" and "error" are failures here).
FinishReason = Literal["stop", "length"]
T = TypeVar("T")


@dataclass(slots=True)
class TokenDelta:
    """New tokens of one choice, in order. The last delta has `finish_reason` and the final `text`."""

    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: FinishReason | None = None
    text: str | None = None
    top_logprobs: list[TopLogprobs] | None = None


class ChoiceStream:
    """Reads one backend request. `aclose()` cancels it on the serving side (frees its KV)."""

    def __init__(self, index: int, prompt_index: int, request: GenerateRequest, chunks: AsyncIterator[TokenChunk]):
        self.index = index
        self.prompt_index = prompt_index
        self.request = request
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[TopLogprobs] = []
        # The prompt's scores (params.prompt_logprobs): logprob of prompt token i + 1, and its
        # alternatives; from the chunk of output index 0.
        self.prompt_logprobs: list[float] | None = None
        self.prompt_top_logprobs: list[TopLogprobs] | None = None
        self.prompt_ranks: list[int] | None = None
        self.stop_reason: str | int | None = None  # vLLM's: the stop string or token id that ended it
        self.finish_reason: FinishReason | None = None
        self.text: str | None = None
        self.cached_tokens = 0
        self.last_delta_at: float | None = None  # perf_counter when the last delta was handed out
        self._chunks = chunks
        self._ahead: dict[int, TokenChunk] = {}
        self._peeked: TokenDelta | None = None
        self._closed = False
        self._guard = DeadlineGuard(request.deadline + DEADLINE_GRACE_S)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def has_delta_in_hand(self) -> bool:
        """A delta was peeked and not yet consumed: `next()` returns it without waiting."""
        return self._peeked is not None

    async def peek(self) -> TokenDelta:
        """The next delta without consuming it (the router waits for each choice's first one)."""
        if self._peeked is None:
            delta = await self._read()
            if delta is None:
                raise internal_error()
            self._peeked = delta
        return self._peeked

    async def next(self) -> TokenDelta | None:
        """The next delta, or None once the choice has finished. Raises ApiError on failure."""
        if self._peeked is not None:
            delta, self._peeked = self._peeked, None
            return delta
        return await self._read()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard.cancel()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("closing the backend stream failed", backend_request_id=self.request.request_id)

    async def _read(self) -> TokenDelta | None:
        while not self.finished:
            delta = self._take_in_order()
            if delta is not None:
                return delta
            self._accept(await self._receive())
        return None

    async def _receive(self) -> TokenChunk:
        try:
            return await self._guard.wait(anext(self._chunks))
        except TimeoutError:
            raise ApiError(504, "request deadline passed", code="timeout") from None
        except StopAsyncIteration:
            log.error(
                "backend stream ended before finishing",
                backend_request_id=self.request.request_id,
                have=len(self.token_ids),
                ahead=sorted(self._ahead),
            )
            raise internal_error() from None
        except ApiError:
            raise
        except Exception:
            log.exception("backend stream failed", backend_request_id=self.request.request_id)
            raise internal_error() from None

    def _accept(self, chunk: TokenChunk) -> None:
        if chunk.error or chunk.finish_reason == "error":
            log.warning(
                "backend error", backend_request_id=self.request.request_id, code=chunk.error_code, error=chunk.error
            )
            raise backend_error(chunk.error_code, chunk.error, _retry_after(chunk))
        if chunk.finish_reason == "abort":
            # We did not cancel it (we would have stopped reading): a worker gave up, e.g. draining.
            raise backend_error(503, "the request was aborted by a worker; retry")
        self.cached_tokens = max(self.cached_tokens, chunk.cached_tokens)
        have = len(self.token_ids)
        if chunk.index + len(chunk.token_ids) <= have and chunk.finish_reason is None:
            return  # a duplicate of tokens we already have
        held = self._ahead.get(chunk.index)
        # Two chunks at one index: keep the finishing one, else the longer one.
        if (
            held is None
            or chunk.finish_reason is not None
            or (held.finish_reason is None and len(chunk.token_ids) > len(held.token_ids))
        ):
            self._ahead[chunk.index] = chunk
        if len(self._ahead) > MAX_CHUNKS_AHEAD:
            log.error("backend stream has a gap", backend_request_id=self.request.request_id, have=have)
            raise internal_error()

    def _take_in_order(self) -> TokenDelta | None:
        while self._ahead:
            index = min(self._ahead)
            have = len(self.token_ids)
            if index > have:
                return None  # a gap: wait for the missing chunk
            chunk = self._ahead.pop(index)
            skip = have - index
            new = chunk.token_ids[skip:]
            if not new and chunk.finish_reason is None:
                continue
            logprobs = chunk.logprobs[skip:] if chunk.logprobs is not None else None
            if chunk.prompt_logprobs is not None and self.prompt_logprobs is None:
                self._take_prompt_scores(chunk)
            self.token_ids.extend(new)
            if logprobs is not None:
                self.logprobs.extend(logprobs)
            top = _top_logprobs(chunk, skip) if chunk.top_token_ids is not None else None
            if top is not None:
                self.top_logprobs.extend(top)
            reason = _finish_reason(chunk, self.request.request_id)
            if reason is not None:
                self.finish_reason = reason
                self.text = chunk.text
                self.stop_reason = chunk.stop_reason
                self._ahead.clear()
                self._guard.cancel()
            return TokenDelta(new, logprobs, reason, chunk.text, top)
        return None

    def _take_prompt_scores(self, chunk: TokenChunk) -> None:
        """The prompt's scores, if they are whole (one per prompt token after the first)."""
        expected = len(self.prompt_token_ids) - 1
        tops = None
        try:
            if chunk.prompt_top_token_ids is not None and chunk.prompt_top_logprobs is not None:
                tops = top_from_wire(chunk.prompt_top_token_ids, chunk.prompt_top_logprobs, "TokenChunk prompt")
            if len(chunk.prompt_logprobs or ()) != expected or (tops is not None and len(tops) != expected):
                raise ProtocolError(f"prompt scores do not cover the {expected} prompt tokens after the first")
        except ProtocolError as exc:
            log.warning("dropped malformed prompt logprobs", backend_request_id=chunk.request_id, error=str(exc))
            return
        self.prompt_logprobs, self.prompt_top_logprobs = chunk.prompt_logprobs, tops
        ranks = chunk.prompt_ranks
        self.prompt_ranks = ranks if ranks is not None and len(ranks) == expected else None


def _top_logprobs(chunk: TokenChunk, skip: int) -> list[TopLogprobs] | None:
    """The chunk's alternatives per token from the `skip`-th on; None if it has none, or none that
    pair up (the response then leaves them out rather than failing the request)."""
    if chunk.top_token_ids is None or chunk.top_logprobs is None:
        return None
    try:
        return top_from_wire(chunk.top_token_ids[skip:], chunk.top_logprobs[skip:], "TokenChunk")
    except ProtocolError as exc:
        log.warning("dropped malformed top logprobs", backend_request_id=chunk.request_id, error=str(exc))
        return None


class DeadlineGuard:
    """`asyncio.timeout` for a series of reads with one deadline (Unix seconds), armed once.

    A stream reads a chunk per token; a fresh `asyncio.timeout` per read (a timer scheduled
    and cancelled each time) cost about a tenth of the router's time per token. Here one timer
    lasts the whole stream: when it fires, it cancels the read in progress, which then raises
    TimeoutError; a read that starts after the deadline gets a zero timeout of its own.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._passed = False
        self._reader: asyncio.Task[object] | None = None
        self._fired = False

    async def wait(self, awaitable: Awaitable[T]) -> T:
        if self._passed:
            async with asyncio.timeout(0):
                return await awaitable
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self.deadline - time.time(), self._expire)
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._reader, self._fired = task, False
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Ours, not someone else's cancel (asyncio.timeout's own test).
            if self._fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._reader = None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        self._passed = True
        if self._reader is not None and not self._fired:
            self._fired = True
            self._reader.cancel()


def _finish_reason(chunk: TokenChunk, backend_request_id: str) -> FinishReason | None:
    if chunk.finish_reason is None or chunk.finish_reason in ("stop", "length"):
        return chunk.finish_reason  # type: ignore[return-value]
    log.warning("unknown finish reason", backend_request_id=backend_request_id, reason=chunk.finish_reason)
    return "stop"


def _retry_after(chunk: TokenChunk) -> float | None:
    value = chunk.extra.get("retry_after_s") if chunk.extra else None
    return float(value) if isinstance(value, int | float) else None
