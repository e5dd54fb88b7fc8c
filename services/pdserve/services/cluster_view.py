"""Who is alive, built from heartbeats: the router and prefill workers choose peers from it.

A worker is dropped once it has been silent for `miss_limit` of its own heartbeat intervals,
so a killed process disappears within a few seconds without any explicit goodbye. Silence
heard while our own broker connection is down (or just back) says nothing about the worker,
so nobody is dropped then: a broker restart must not look like the whole cluster dying.
"""

from __future__ import annotations

import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pdserve.errors import ProtocolError
from pdserve.protocol import Subjects, WorkerHeartbeat, decode
from pdserve.services.blindness import Blindness
from pdserve.serving.backend import WorkerInfo

log = structlog.get_logger("pdserve.cluster_view")


class ClusterView:
    def __init__(self, nc: Client, subjects: Subjects, miss_limit: float = 3.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.miss_limit = miss_limit
        self._beats: dict[str, tuple[WorkerHeartbeat, float]] = {}
        self.rejected = 0
        # Requests this process sent to a worker since its last heartbeat: spreads a burst
        # that arrives between two heartbeats instead of sending it all to one worker.
        self.assigned: dict[str, int] = {}
        # Blind while our link is down, and for one full miss window after it is back.
        self._blindness = Blindness(nc, self._miss_window_s)

    async def start(self) -> None:
        await self.nc.subscribe(self.subjects.heartbeat, cb=self._on_heartbeat)
        self._blindness.start("cluster-view-connection")

    async def stop(self) -> None:
        await self._blindness.stop()

    def _miss_window_s(self) -> float:
        interval = max((beat.interval_s for beat, _ in self._beats.values()), default=1.0)
        return self.miss_limit * interval + 1.0

    @property
    def blind(self) -> bool:
        return self._blindness.blind

    def is_alive(self, worker_id: str) -> bool:
        """False once the worker has gone silent (never while we cannot hear anyone)."""
        if self.blind:
            return True
        return any(b.worker_id == worker_id for b in self.live())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data, WorkerHeartbeat)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("dropped malformed heartbeat", error=str(exc))
            return
        if beat.worker_id not in self._beats:
            log.info("worker joined", worker=beat.worker_id, role=beat.role, host=beat.host, pid=beat.pid)
        self._beats[beat.worker_id] = (beat, time.monotonic())
        self.assigned[beat.worker_id] = 0

    def live(self, role: str | None = None) -> list[WorkerHeartbeat]:
        now = time.monotonic()
        blind = self.blind
        alive = []
        for worker_id, (beat, seen) in list(self._beats.items()):
            if not blind and now - seen > self.miss_limit * max(beat.interval_s, 0.1):
                del self._beats[worker_id]
                self.assigned.pop(worker_id, None)
                log.warning("worker went silent; dropped", worker=worker_id, role=beat.role)
                continue
            if role is None or beat.role == role:
                alive.append(beat)
        return alive

    def load(self, beat: WorkerHeartbeat) -> float:
        """Lower is better: queued work first, then KV pressure as the tie-breaker."""
        queued = beat.running + beat.waiting + self.assigned.get(beat.worker_id, 0)
        return queued + beat.kv_blocks_used / max(beat.kv_blocks_total, 1)

    def by_load(self, roles: tuple[str, ...], exclude: set[str] | None = None) -> list[WorkerHeartbeat]:
        candidates = [b for b in self.live() if b.role in roles and not b.draining]
        if exclude:
            candidates = [b for b in candidates if b.worker_id not in exclude]
        return sorted(candidates, key=self.load)

    def note_assigned(self, worker_id: str) -> None:
        self.assigned[worker_id] = self.assigned.get(worker_id, 0) + 1

    def workers(self) -> list[WorkerInfo]:
        now_wall = time.time()
        return [
            WorkerInfo(
                id=b.worker_id,
                role=b.role,
                pid=b.pid,
                host=b.host,
                running=b.running,
                waiting=b.waiting,
                kv_blocks_used=b.kv_blocks_used,
                kv_blocks_total=b.kv_blocks_total,
                last_seen=now_wall,
                ucx_address=b.ucx_address,
                draining=b.draining,
            )
            for b in self.live()
        ]
