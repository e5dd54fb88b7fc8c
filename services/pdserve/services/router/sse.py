"""Server-sent events: the response type of `stream: true`.

Unlike Starlette's StreamingResponse, this one always closes its event source, whether the stream
ended, the client disconnected (noticed even while no token is being sent) or sending failed:
closing the source is what cancels the requests on the workers and frees their KV.

Events that are ready together go out in one write: under load a stream's tokens arrive in
bursts, and each write costs more (HTTP framing, middleware, a syscall) than making an event.
An idle stream still writes every event as soon as it is made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pdserve.services.router.disconnect import ClientDisconnected, DisconnectWatch
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_json(payload_json: str) -> bytes:
    return b"data: " + payload_json.encode() + b"\n\n"


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_disconnect: Callable[[], None] | None = None,
        watch: DisconnectWatch | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """`watch`: the request's disconnect watcher, if it has one already (this response closes it).
        `ready`: a hint that the source's next event can be made without waiting (the first event
        always is taken as ready); events are made in the request's own task while it holds,
        then by a producer task, so the writer can batch what piles up while it writes."""
        # Like StreamingResponse: no body attribute, hence no Content-Length header.
        self.status_code = 200
        self.background = None
        # Proxies (nginx) must pass events through as they come.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.on_disconnect = on_disconnect
        self.watch = watch
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch or DisconnectWatch(receive)
        try:
            try:
                await watch.guard(self._stream(send))
            except (ClientDisconnected, OSError):  # gone while idle, or a write to it failed
                if self.on_disconnect is not None:
                    self.on_disconnect()
        finally:
            watch.close()
            await self.events.aclose()

    async def _stream(self, send: Send) -> None:
        if await self._stream_ready_events(send):
            return
        batch = _EventBatch()
        producer = asyncio.create_task(self._produce(batch))
        try:
            while (body := await batch.take()) is not None:
                if batch.finished and producer.done() and not producer.cancelled() and producer.exception() is None:
                    # The last events: they and the end of the response go out in one write.
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await producer  # raises what the event source raised, once what it made is sent
        finally:
            if not producer.done():
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
            elif not producer.cancelled():
                producer.exception()  # a finished one needs no loop turn; its error is marked as seen
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_ready_events(self, send: Send) -> bool:
        """Make and write, in this task, the events the source has ready (at least the first);
        True if that was the whole stream. A short answer then needs no producer task, and its
        events and the end of the response go out in one write."""
        parts: list[bytes] = []
        while not parts or (self.ready is not None and self.ready()):
            try:
                parts.append(await anext(self.events))
                if parts[-1] is DONE:
                    # The stream's last event by protocol: the response ends with it now, and the
                    # source's cleanup (closing the requests) runs after the write, when
                    # __call__ closes the source, instead of before it.
                    await self._start(send)
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                    return True
            except StopAsyncIteration:
                await self._start(send)
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                return True
            except Exception:
                # What was made before the source failed still goes out, as with the producer.
                # Nothing made: nothing started either, and the caller answers a proper 500.
                if parts:
                    await self._start(send)
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                raise
        await self._start(send)
        await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
        return False

    async def _start(self, send: Send) -> None:
        # Sent with the first events rather than before making them: uvicorn writes the headers
        # at once, so this way the client gets headers and first events back to back instead
        # of waking for the headers alone (one wake fewer on the path of a short answer).
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

    async def _produce(self, batch: _EventBatch) -> None:
        try:
            async for event in self.events:
                await batch.put(event)
        finally:
            batch.close()


class _EventBatch:
    """Events made but not yet written. The writer takes all of them at once; the maker waits
    while `limit_bytes` are pending, so a slow client still slows its stream down."""

    def __init__(self, limit_bytes: int = 64 << 10) -> None:
        self.limit_bytes = limit_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._closed = False
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, event: bytes) -> None:
        self._parts.append(event)
        self._size += len(event)
        self._ready.set()
        if self._size >= self.limit_bytes:
            self._room.clear()
            await self._room.wait()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def finished(self) -> bool:
        """Closed with nothing left to take: whatever was taken last was the end."""
        return self._closed and not self._parts

    async def take(self) -> bytes | None:
        """Everything pending as one body, waiting for at least one event; None once closed and empty."""
        while not self._parts:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        self._room.set()
        return body
