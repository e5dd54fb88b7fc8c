"""Server-sent events: the response type of `stream: true`.

Unlike Starlette's StreamingResponse, this one always closes its event source, whether the stream
ended, the client disconnected (noticed even while no token is being sent) or sending failed:
closing the source is what cancels the requests on the workers and frees their KV.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pdserve.services.router.disconnect import wait_for_disconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_json(payload_json: str) -> bytes:
    return b"data: " + payload_json.encode() + b"\n\n"


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_disconnect: Callable[[], None] | None = None) -> None:
        # Like StreamingResponse: no body attribute, hence no Content-Length header.
        self.status_code = 200
        self.background = None
        # Proxies (nginx) must pass events through as they come.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.create_task(self._stream(send))
        watcher = asyncio.create_task(wait_for_disconnect(receive))
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            disconnected = not streamer.done() or isinstance(_exception(streamer), OSError)
            if disconnected and self.on_disconnect is not None:
                self.on_disconnect()
        finally:
            for task in (streamer, watcher):
                task.cancel()
            await asyncio.gather(streamer, watcher, return_exceptions=True)
            await self.events.aclose()
        error = _exception(streamer)
        if error is not None and not isinstance(error, OSError):
            raise error

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _exception(task: asyncio.Task[None]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()
