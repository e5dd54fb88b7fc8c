"""The router's Backend over NATS: picks workers by load, sends the task, relays the stream.

Per request: choose a colocated worker or a prefill worker plus a decode worker (lowest load
first, from heartbeats), send the GenerateTask as a request (the ack says admitted or why
not; a refusal or silence moves on to the next candidate), then yield TokenChunks from the
request's stream subject in output order. Closing the generator early publishes a cancel.

When the attempt is lost (its worker went silent, tokens went missing, the stream stalled) or
fails in a way another worker may not (KV hand-off or import), the request migrates: the
prompt plus every token delivered so far is re-prefilled on a live pair, which continues the
same stream at the next index, so nothing is duplicated or dropped (greedy and seeded sampling
give the same tokens; see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import replace

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pdserve.errors import ProtocolError
from pdserve.protocol import (
    CancelRequest,
    GenerateTask,
    RouterHeartbeat,
    Subjects,
    TaskAck,
    TokenChunk,
    WorkerHeartbeat,
    encode,
    params_to_wire,
)
from pdserve.protocol.stream import StreamMessage, decode_stream_message
from pdserve.services.bus import send_now
from pdserve.services.cluster_view import ClusterView
from pdserve.services.stream_follower import AttemptFollower, MigrationPolicy
from pdserve.serving.backend import GenerateRequest, WorkerInfo
from pdserve.serving.chunks import error_chunk

log = structlog.get_logger("pdserve.router.backend")

TASK_ACK_TIMEOUT_S = 2.0
STATUS_HEADER, NO_RESPONDERS_STATUS = "Status", "503"  # as nats-server marks it and nats-py parses it
# Queued in place of an ack when the broker reports that no one took the task.
_NO_RESPONDERS = TaskAck(accepted=False, reason="no responders", code=503)
MAX_TASK_TRIES = 3
ROUTER_HEARTBEAT_S = 1.0  # workers wait several of these (their --router-timeout-s) before giving up on us


class ClusterBackend:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        router_id: str | None = None,
        policy: MigrationPolicy | None = None,
        heartbeat_s: float = ROUTER_HEARTBEAT_S,
    ) -> None:
        """`heartbeat_s`: how often this router tells the workers it is alive (router_watch.py)."""
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be positive, got {heartbeat_s!r}")
        self.nc = nc
        self.heartbeat_s = heartbeat_s
        self._heartbeat: asyncio.Task[None] | None = None
        self.policy = policy or MigrationPolicy()
        self.migrations = 0
        self.subjects = subjects
        self.router_id = router_id or f"router-{uuid.uuid4().hex[:10]}"
        self.view = ClusterView(nc, subjects)
        self._queues: dict[str, asyncio.Queue[StreamMessage]] = {}
        self.malformed = 0

    async def start(self) -> None:
        await self.view.start()
        await self.nc.subscribe(self.subjects.stream_wildcard(self.router_id), cb=self._on_stream_message)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="router-heartbeat")

    async def _heartbeat_loop(self) -> None:
        beat = RouterHeartbeat(router_id=self.router_id, sent_at=0.0, interval_s=self.heartbeat_s)
        while True:
            beat.sent_at = time.time()
            try:
                await self.nc.publish(self.subjects.router_heartbeat, encode(beat))
                send_now(self.nc)
            except Exception as exc:  # the broker may be restarting; keep beating
                log.warning("router heartbeat failed", error=repr(exc))
            await asyncio.sleep(self.heartbeat_s)

    @property
    def max_model_len(self) -> int:
        lens = [b.max_model_len for b in self.view.live()]
        return min(lens) if lens else 0  # no workers: the router answers 503

    def ready(self) -> bool:
        roles = {b.role for b in self.view.live() if not b.draining}
        return "worker" in roles or {"prefill", "decode"} <= roles

    def workers(self) -> list[WorkerInfo]:
        return self.view.workers()

    async def _on_stream_message(self, msg: Msg) -> None:
        """A request's stream subject carries the worker's TaskAck, then its TokenChunks."""
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
            # The broker's answer to a task nobody is subscribed for (the worker died, its beats
            # not yet stale): move on at once, as nats-py's request() would have.
            queue = self._queues.get(msg.subject.rpartition(".")[2])
            if queue is not None:
                queue.put_nowait(_NO_RESPONDERS)
            return
        try:
            message = decode_stream_message(msg.data)
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("dropped malformed stream message", subject=msg.subject, error=str(exc))
            return
        # The ack names no request: the subject's last token does (subjects.stream()).
        wire_id = message.request_id if isinstance(message, TokenChunk) else msg.subject.rpartition(".")[2]
        queue = self._queues.get(wire_id)
        if queue is not None:
            queue.put_nowait(message)

    def _targets(self, avoid: set[str]) -> list[tuple[WorkerHeartbeat, str]]:
        """(worker to send the task to, decode worker for it or "") in order of preference;
        workers in `avoid` (they lost this request before) only when nobody else is left."""
        decodes = _avoiding(self.view.by_load(("decode",)), avoid)
        roles: tuple[str, ...] = ("worker", "prefill") if decodes else ("worker",)
        targets = []
        for beat in _avoiding(self.view.by_load(roles), avoid):
            targets.append((beat, decodes[0].worker_id if beat.role == "prefill" else ""))
        return targets

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        """Serve one request, migrating it (re-prefill of prompt plus the tokens delivered so
        far, on a live pair) when the attempt serving it is lost, up to max_migrations times."""
        rid = request.request_id
        delivered: list[int] = []
        avoid: set[str] = set()
        for attempt in range(self.policy.max_migrations + 1):
            # A fresh id per attempt: a stale holder's late chunks can never mix into the new one.
            wire_id = rid if attempt == 0 else f"{rid}-m{attempt}"
            queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
            self._queues[wire_id] = queue
            follower: AttemptFollower | None = None
            try:
                target = await self._dispatch(request, wire_id, delivered, avoid, queue)
                if isinstance(target, TokenChunk):
                    yield replace(target, request_id=rid, index=len(delivered))
                    return
                follower = AttemptFollower(queue, self.view, target, len(delivered), request.deadline, self.policy)
                async for chunk in follower.chunks():
                    if follower.outcome in ("error", "deadline") and self._retryable(chunk, attempt):
                        follower.outcome, follower.lost_reason = "lost", chunk.error
                        break
                    delivered.extend(chunk.token_ids)
                    # Only a migrated attempt's chunks carry another id; copying the rest costs per token.
                    yield chunk if chunk.request_id == rid else replace(chunk, request_id=rid)
                if follower.outcome != "lost":
                    return
            finally:
                self._queues.pop(wire_id, None)
                if follower is not None and follower.outcome != "finished":
                    # Lost, failed, or the client went away: whoever still holds it lets go.
                    with contextlib.suppress(Exception):
                        await self.nc.publish(self.subjects.cancel, encode(CancelRequest(wire_id, "migrated")))
                        send_now(self.nc)
            avoid.add(follower.holder)
            self.migrations += 1
            log.warning(
                "request lost; migrating",
                request_id=rid,
                attempt=attempt + 1,
                reason=follower.lost_reason,
                delivered_tokens=len(delivered),
            )
        reason = follower.lost_reason if follower is not None else "unknown"
        message = f"request lost its worker {self.policy.max_migrations + 1} times (last: {reason}); retry later"
        yield error_chunk(rid, self.router_id, message, 503, len(delivered))

    def _retryable(self, chunk: TokenChunk, attempt: int) -> bool:
        """A worker-side failure another pair may not have: the KV hand-off or import failed."""
        return chunk.error_code in (500, 502, 503) and attempt < self.policy.max_migrations

    async def _dispatch(
        self,
        request: GenerateRequest,
        wire_id: str,
        delivered: list[int],
        avoid: set[str],
        queue: asyncio.Queue[StreamMessage],
    ) -> str | TokenChunk:
        """Send the task to the best worker that accepts it: that worker's id, or an error chunk.

        A migrating request, or any request while our broker link is down or just back, is
        patient: it keeps trying (up to wait_for_workers_s, within its deadline) while workers
        are missing or unreachable, so a short broker restart or a worker restart is not an
        error. Otherwise the answer is immediate, and a full cluster gets its 429/503 at once.
        """
        patient_until = min(time.time() + self.policy.wait_for_workers_s, request.deadline)
        given_up: set[str] = set()  # workers that did not answer this task in time
        while True:
            was_blind = self.view.blind
            result, retry = await self._try_targets(request, wire_id, delivered, avoid, queue, given_up)
            # Also judged after the attempt: a broker outage that began while we waited for the ack
            # (the task or its answer lost with the broker) says nothing about the workers either.
            patient = bool(delivered or avoid) or was_blind or self.view.blind
            if isinstance(result, str) or not retry or not patient or time.time() >= patient_until:
                return result
            await asyncio.sleep(self.policy.poll_s)

    async def _try_targets(
        self,
        request: GenerateRequest,
        wire_id: str,
        delivered: list[int],
        avoid: set[str],
        queue: asyncio.Queue[StreamMessage],
        given_up: set[str],
    ) -> tuple[str | TokenChunk, bool]:
        """One pass over the best targets: (worker id or error chunk, worth retrying later)."""
        rid = request.request_id
        targets = self._targets(avoid)
        if not targets:
            return error_chunk(rid, self.router_id, "no live workers can serve the request", 503), True
        last = (f"{min(len(targets), MAX_TASK_TRIES)} workers refused the request", 503)
        unreachable = True  # every target silent, rather than refusing
        stream_subject = self.subjects.stream(self.router_id, wire_id)
        for beat, decode_worker in targets[:MAX_TASK_TRIES]:
            task = GenerateTask(
                request_id=wire_id,
                prompt_token_ids=request.prompt_token_ids,
                params=params_to_wire(request.params),
                stream_subject=stream_subject,
                deadline=request.deadline,
                decode_worker=decode_worker,
                resume_token_ids=list(delivered),
            )
            # Counted before the ack comes back, so a burst of concurrent requests spreads out.
            self.view.note_assigned(beat.worker_id)
            if decode_worker:
                self.view.note_assigned(decode_worker)
            given_up.discard(beat.worker_id)  # tried again: its answers count again
            try:
                # Request/reply with the stream subject as the reply inbox: the ack arrives where the
                # tokens will, so no reply subscription, inbox token or reply future per request.
                await self.nc.publish(self.subjects.task(beat.worker_id), encode(task), reply=stream_subject)
                send_now(self.nc)
                timeout = min(TASK_ACK_TIMEOUT_S, max(request.deadline - time.time(), 0.01))
                async with asyncio.timeout(timeout):
                    answer = await answer_from(queue, beat.worker_id, given_up)
            except Exception as exc:  # timeout, broker reconnecting
                log.warning("task not acknowledged", request_id=rid, worker=beat.worker_id, error=repr(exc))
                last = (f"worker {beat.worker_id} did not answer", 503)
                given_up.add(beat.worker_id)
                continue
            if answer is _NO_RESPONDERS:
                log.warning("task not acknowledged", request_id=rid, worker=beat.worker_id, error="no responders")
                last = (f"worker {beat.worker_id} did not answer", 503)
                given_up.add(beat.worker_id)
                continue
            if isinstance(answer, TokenChunk):
                # Tokens before any ack: the worker let its first chunk answer for the ack
                # (task_ack.py); only an accepting worker sends tokens. Kept for the follower.
                queue.put_nowait(answer)
                ack = TaskAck(accepted=True)
                _requeue_first(queue)
            else:
                ack = answer
            if ack.accepted:
                log.info(
                    "task sent",
                    request_id=rid,
                    worker=beat.worker_id,
                    decode_worker=decode_worker or None,
                    resumed_tokens=len(delivered),
                )
                return beat.worker_id, False
            if ack.code in (400, 504):
                return error_chunk(rid, self.router_id, ack.reason, ack.code), False
            unreachable = False
            last = (ack.reason, ack.code)
        return error_chunk(rid, self.router_id, last[0], last[1]), unreachable

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self._queues.clear()
        await self.view.stop()


async def answer_from(
    queue: asyncio.Queue[StreamMessage], worker_id: str, given_up: Collection[str] = ()
) -> StreamMessage:
    """The first stream message that answers a task sent to `worker_id`: its ack (or an unnamed
    one, from an older worker), the broker's no-responders, or a token (a worker may let its
    first token answer for its ack, see task_ack.py). A late answer from a worker tried before
    (it timed out), ack or token, is skipped: it must not pass for this worker's answer."""
    while True:
        item = await queue.get()
        if isinstance(item, TaskAck) and item is not _NO_RESPONDERS and item.worker_id not in ("", worker_id):
            log.info("late ack from a worker tried before; ignored", worker=item.worker_id, accepted=item.accepted)
            continue
        if isinstance(item, TokenChunk) and item.worker_id in given_up:
            log.info("late tokens from a worker tried before; ignored", worker=item.worker_id)
            continue
        return item


def _requeue_first(queue: asyncio.Queue[StreamMessage]) -> None:
    """Move the item just put back to the front of the queue, ahead of what came after it."""
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in [items[-1], *items[:-1]]:
        queue.put_nowait(item)


def _avoiding(beats: list[WorkerHeartbeat], avoid: set[str]) -> list[WorkerHeartbeat]:
    return [b for b in beats if b.worker_id not in avoid] + [b for b in beats if b.worker_id in avoid]
