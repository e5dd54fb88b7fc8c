"""When silence heard on the broker says nothing: while our own connection is down, and for a
window after it comes back (heartbeats need that long to arrive again once we are resubscribed).

Both views built from heartbeats use it: the router's view of workers (cluster_view.py) and the
workers' view of routers (router_watch.py). Without it a broker restart would look like every
peer dying at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client


class Blindness:
    def __init__(self, nc: Client, window_s: Callable[[], float], period_s: float = 0.1) -> None:
        """`window_s()`: how long after a reconnect silence still says nothing (read at each check)."""
        self.nc = nc
        self.window_s = window_s
        self.period_s = period_s
        self.until = 0.0  # monotonic time until which we are blind even while connected
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._watch(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def blind(self) -> bool:
        return time.monotonic() < self.until or not self.nc.is_connected

    async def _watch(self) -> None:
        while True:
            if not self.nc.is_connected:
                self.until = time.monotonic() + self.window_s()
            await asyncio.sleep(self.period_s)
