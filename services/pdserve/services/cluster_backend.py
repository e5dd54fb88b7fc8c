"""The router's Backend over NATS: picks workers by load, sends the task, relays the stream.

Per request: choose a colocated worker or a prefill worker plus a decode worker (lowest load
first, from heartbeats), send the GenerateTask as a request (the ack says admitted or why
not; a refusal or silence moves on to the next candidate), then yield TokenChunks from the
request's stream subject in output order. Closing the generator early publishes a cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pdserve.errors import ProtocolError
from pdserve.protocol import (
    CancelRequest,
    GenerateTask,
    Subjects,
    TaskAck,
    TokenChunk,
    WorkerHeartbeat,
    decode,
    encode,
    params_to_wire,
)
from pdserve.services.cluster_view import ClusterView
from pdserve.serving.backend import GenerateRequest, WorkerInfo
from pdserve.serving.chunks import error_chunk

log = structlog.get_logger("pdserve.router.backend")

TASK_ACK_TIMEOUT_S = 2.0
MAX_TASK_TRIES = 3


class ClusterBackend:
    def __init__(self, nc: Client, subjects: Subjects, router_id: str | None = None) -> None:
        self.nc = nc
        self.subjects = subjects
        self.router_id = router_id or f"router-{uuid.uuid4().hex[:10]}"
        self.view = ClusterView(nc, subjects)
        self._queues: dict[str, asyncio.Queue[TokenChunk]] = {}
        self.malformed = 0

    async def start(self) -> None:
        await self.view.start()
        await self.nc.subscribe(self.subjects.stream_wildcard(self.router_id), cb=self._on_chunk)

    @property
    def max_model_len(self) -> int:
        lens = [b.max_model_len for b in self.view.live()]
        return min(lens) if lens else 0  # no workers: the router answers 503

    def ready(self) -> bool:
        roles = {b.role for b in self.view.live() if not b.draining}
        return "worker" in roles or {"prefill", "decode"} <= roles

    def workers(self) -> list[WorkerInfo]:
        return self.view.workers()

    async def _on_chunk(self, msg: Msg) -> None:
        try:
            chunk = decode(msg.data, TokenChunk)
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("dropped malformed token chunk", subject=msg.subject, error=str(exc))
            return
        queue = self._queues.get(chunk.request_id)
        if queue is not None:
            queue.put_nowait(chunk)

    def _targets(self) -> list[tuple[WorkerHeartbeat, str]]:
        """(worker to send the task to, decode worker for it or "") in order of preference."""
        decodes = self.view.by_load(("decode",))
        roles: tuple[str, ...] = ("worker", "prefill") if decodes else ("worker",)
        targets = []
        for beat in self.view.by_load(roles):
            targets.append((beat, decodes[0].worker_id if beat.role == "prefill" else ""))
        return targets

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        rid = request.request_id
        queue: asyncio.Queue[TokenChunk] = asyncio.Queue()
        self._queues[rid] = queue
        finished = False
        sent = False
        try:
            error = await self._dispatch(request)
            if error is not None:
                finished = True
                yield error
                return
            sent = True
            async for chunk in _in_order(queue, rid, request.deadline):
                if chunk.finish_reason is not None:
                    finished = True
                yield chunk
                if finished:
                    return
        finally:
            self._queues.pop(rid, None)
            if sent and not finished:
                with contextlib.suppress(Exception):
                    await self.nc.publish(self.subjects.cancel, encode(CancelRequest(rid)))

    async def _dispatch(self, request: GenerateRequest) -> TokenChunk | None:
        """Send the task to the best worker that accepts it; an error chunk if none does."""
        rid = request.request_id
        targets = self._targets()
        if not targets:
            return error_chunk(rid, self.router_id, "no live workers can serve the request", 503)
        last = (f"{min(len(targets), MAX_TASK_TRIES)} workers refused the request", 503)
        for beat, decode_worker in targets[:MAX_TASK_TRIES]:
            task = GenerateTask(
                request_id=rid,
                prompt_token_ids=request.prompt_token_ids,
                params=params_to_wire(request.params),
                stream_subject=self.subjects.stream(self.router_id, rid),
                deadline=request.deadline,
                decode_worker=decode_worker,
            )
            # Counted before the ack comes back, so a burst of concurrent requests spreads out.
            self.view.note_assigned(beat.worker_id)
            if decode_worker:
                self.view.note_assigned(decode_worker)
            try:
                subject = self.subjects.task(beat.worker_id)
                reply = await self.nc.request(subject, encode(task), timeout=TASK_ACK_TIMEOUT_S)
                ack = decode(reply.data, TaskAck)
            except Exception as exc:  # timeout, no responders, broker reconnecting, garbage
                log.warning("task not acknowledged", request_id=rid, worker=beat.worker_id, error=repr(exc))
                last = (f"worker {beat.worker_id} did not answer", 503)
                continue
            if ack.accepted:
                log.info("task sent", request_id=rid, worker=beat.worker_id, decode_worker=decode_worker or None)
                return None
            if ack.code == 400:
                return error_chunk(rid, self.router_id, ack.reason, 400)
            last = (ack.reason, ack.code)
        return error_chunk(rid, self.router_id, last[0], last[1])

    async def close(self) -> None:
        self._queues.clear()


async def _in_order(queue: asyncio.Queue[TokenChunk], rid: str, deadline: float) -> AsyncIterator[TokenChunk]:
    """Yield chunks by output index: duplicates dropped, early arrivals held until the gap
    fills. Different workers publish a request's chunks (prefill the first, decode the rest),
    and the broker orders messages per publisher only."""
    next_index = 0
    held: dict[int, TokenChunk] = {}
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            yield error_chunk(rid, "router", "request deadline passed", 504, next_index)
            return
        try:
            chunk = await asyncio.wait_for(queue.get(), timeout=remaining)
        except TimeoutError:
            continue
        if chunk.error:
            yield chunk
            return
        if chunk.index + len(chunk.token_ids) <= next_index and chunk.finish_reason is None:
            continue  # already delivered
        held[chunk.index] = chunk
        while next_index in held:
            ready = held.pop(next_index)
            next_index += len(ready.token_ids)
            yield ready
            if ready.finish_reason is not None:
                return
