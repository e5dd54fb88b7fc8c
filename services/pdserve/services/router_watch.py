"""Which routers are still there, from their heartbeats: a worker ends the requests of a router
that has gone.

A router that is killed or crashes sends no cancel: its clients are gone with it, but without
this the workers would keep generating its requests, and holding their KV blocks, until each
request's deadline (up to the router's --request-timeout-s, 600 s by default). Every router
publishes a RouterHeartbeat each second; a worker treats a router as gone once it has heard
nothing from it for `silence_s` (at least three of the router's own intervals), and then ends
that router's requests as if it had cancelled them.

Only routers heard at least once can be judged (one that never sent a heartbeat, such as an
older router, is never held to it), and silence heard while this worker's own broker link is
down, or just back, says nothing: a broker restart must not end every request in the cluster.
"""

from __future__ import annotations

import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pdserve.errors import ProtocolError
from pdserve.protocol import RouterHeartbeat, Subjects, decode
from pdserve.services.blindness import Blindness

log = structlog.get_logger("pdserve.router_watch")

MIN_MISSED_BEATS = 3  # whatever silence_s says, a router may miss this many of its own beats
FORGET_AFTER_S = 3600.0  # routers silent this long are dropped from memory (a restarted router has a new id)


class RouterWatch:
    def __init__(self, nc: Client, subjects: Subjects, silence_s: float) -> None:
        """`silence_s` > 0: how long a heard router may stay silent before it counts as gone."""
        if not silence_s > 0:
            raise ValueError(f"silence_s must be positive, got {silence_s!r}")
        self.nc = nc
        self.subjects = subjects
        self.silence_s = silence_s
        self._heard: dict[str, tuple[float, float]] = {}  # router id -> (monotonic time heard, its interval)
        # Blind while our link is down and for one full silence window after it is back.
        self.blindness = Blindness(nc, lambda: self.silence_s + 1.0)
        self.rejected = 0

    async def start(self) -> None:
        await self.nc.subscribe(self.subjects.router_heartbeat, cb=self._on_heartbeat)
        self.blindness.start("router-watch-connection")

    async def stop(self) -> None:
        await self.blindness.stop()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data, RouterHeartbeat)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("dropped malformed router heartbeat", error=str(exc))
            return
        self.heard(beat.router_id, beat.interval_s)

    def heard(self, router_id: str, interval_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if router_id not in self._heard:
            log.info("router joined", router=router_id)
            self._forget_old(now)
        self._heard[router_id] = (now, interval_s)

    def gone(self, router_id: str, now: float | None = None) -> bool:
        """True once a router heard before has been silent too long (never while we are blind)."""
        now = time.monotonic() if now is None else now
        heard = self._heard.get(router_id)
        if heard is None or now < self.blindness.until or not self.nc.is_connected:
            return False
        at, interval_s = heard
        return now - at > max(self.silence_s, MIN_MISSED_BEATS * interval_s)

    def _forget_old(self, now: float) -> None:
        for router_id, (at, _) in list(self._heard.items()):
            if now - at > FORGET_AFTER_S:
                del self._heard[router_id]
