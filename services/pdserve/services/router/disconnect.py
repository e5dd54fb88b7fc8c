"""Noticing that the client went away, so its requests stop using workers.

An ASGI server reports a closed connection as an `http.disconnect` message from `receive()`;
nothing else interrupts a handler that is awaiting tokens. Once the request body has been read,
the only message `receive()` can still return is that one, so a task waiting on it is a
disconnect watcher.

One watcher serves a whole request (waiting for the first tokens, then streaming), and the work
runs in the request's own task, which the watcher cancels: a task per phase for the work and
another watcher per phase cost measurably in the router's latency per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was complete."""


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Watches one request's connection; `guard(work)` runs work in the calling task and raises
    ClientDisconnected instead if the client leaves first (or had left already). `close()` when
    the request is done. Call from one task at a time."""

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        self._guarded: asyncio.Task[object] | None = None
        self._watcher = asyncio.create_task(wait_for_disconnect(receive))
        self._watcher.add_done_callback(self._on_watcher_done)

    async def guard(self, work: Awaitable[T]) -> T:
        if self.disconnected:
            _close_unawaited(work)
            raise ClientDisconnected()
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._guarded = task
        try:
            return await work
        except asyncio.CancelledError:
            # Ours (the client left), not a cancel from elsewhere (server shutdown): asyncio.timeout's test.
            if self.disconnected and task.uncancel() <= cancelling:
                raise ClientDisconnected() from None
            raise
        finally:
            self._guarded = None

    def close(self) -> None:
        self._watcher.remove_done_callback(self._on_watcher_done)
        self._watcher.cancel()

    def _on_watcher_done(self, watcher: asyncio.Task[None]) -> None:
        if watcher.cancelled():
            return
        # A disconnect, or receive() failing (the connection is unusable either way).
        watcher.exception()  # retrieved, so asyncio does not log it as never retrieved
        self.disconnected = True
        if self._guarded is not None:
            self._guarded.cancel()


def _close_unawaited(work: Awaitable[object]) -> None:
    close = getattr(work, "close", None)
    if close is not None:
        close()  # a coroutine never started: closing it avoids "never awaited"
