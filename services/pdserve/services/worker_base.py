"""What every worker shares: the NATS connection, the engine loop, heartbeats, cancel and drain.

Subclasses (colocated, prefill, decode) only add the subjects they serve and what to do with
the engine's outputs; the serving logic lives in the engine and the transfer plane.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
import time
import uuid
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pdserve.engine.llm_engine import LLMEngine
from pdserve.errors import ProtocolError
from pdserve.outputs import RequestOutput
from pdserve.protocol import (
    CancelRequest,
    Subjects,
    TaskAck,
    TokenChunk,
    WorkerHeartbeat,
    check_token,
    decode,
    encode,
)
from pdserve.services.bus import BusOptions, connect, disconnect, send_now
from pdserve.services.router_watch import RouterWatch
from pdserve.services.task_ack import ACK_GRACE_S, PendingAcks
from pdserve.serving.chunks import error_chunk
from pdserve.serving.engine_loop import EngineLoop

log = structlog.get_logger("pdserve.worker")

# A router silent this long has gone; as long as a router waits for a silent stream (its
# --stall-timeout-s) before it moves a request elsewhere.
ROUTER_TIMEOUT_S = 10.0


class WorkerBase(abc.ABC):
    role = "worker"

    def __init__(
        self,
        engine: LLMEngine,
        bus: BusOptions,
        *,
        model_name: str,
        worker_id: str | None = None,
        heartbeat_s: float = 1.0,
        max_waiting: int = 256,
        drain_timeout_s: float = 30.0,
        ack_grace_s: float = ACK_GRACE_S,
        router_timeout_s: float = ROUTER_TIMEOUT_S,
    ) -> None:
        """`router_timeout_s`: a router silent this long has gone, and its requests end here
        (router_watch.py); 0 keeps them to their deadlines."""
        self.engine = engine
        self.bus = bus
        self.subjects = Subjects(bus.cluster)
        self.model_name = model_name
        host = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname()[:20])
        # The id is a subject token (task.<id>, kv_offer.<id>): no dots, wildcards or spaces.
        self.worker_id = check_token(
            worker_id or f"{self.role}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}", "worker id"
        )
        self.heartbeat_s = heartbeat_s
        self.max_waiting = max_waiting
        self.drain_timeout_s = drain_timeout_s
        self.loop = EngineLoop(engine, self._handle_outputs)
        self.streams: dict[str, str] = {}  # request id -> stream subject, while we hold it
        self.draining = False
        self.nc: Client | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._deadline_task: asyncio.Task[None] | None = None
        self.deadlines: dict[str, float] = {}  # request id -> Unix deadline, while we hold it
        self.counters: dict[str, int] = {"malformed": 0, "refused": 0, "accepted": 0, "cancelled": 0, "router_gone": 0}
        self.acks = PendingAcks(self.reply, self.spawn, ack_grace_s)
        if router_timeout_s < 0:
            raise ValueError(f"router_timeout_s must be 0 (off) or positive, got {router_timeout_s!r}")
        self.router_timeout_s = router_timeout_s
        self.routers: RouterWatch | None = None
        structlog.contextvars.bind_contextvars(worker_id=self.worker_id, role=self.role)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.nc = await connect(self.bus, name=self.worker_id)
        await self.loop.start()
        await self._subscribe(self.subjects.cancel, self._on_cancel)
        if self.router_timeout_s > 0:
            self.routers = RouterWatch(self.nc, self.subjects, self.router_timeout_s)
            await self.routers.start()
        await self.subscribe_work()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        self._deadline_task = asyncio.create_task(self._deadline_loop(), name="deadlines")
        log.info(
            "worker ready",
            model=self.model_name,
            kv_blocks=self.engine.kv_blocks_total,
            block_size=self.engine.kv_layout.block_size,
            max_model_len=self.engine.max_model_len,
        )

    @abc.abstractmethod
    async def subscribe_work(self) -> None:
        """Subscribe to the subjects this kind of worker serves."""

    async def _subscribe(self, subject: str, handler: Any) -> None:
        assert self.nc is not None
        self._subs.append(await self.nc.subscribe(subject, cb=handler))

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def busy(self) -> bool:
        return bool(self.streams) or bool(self.engine.requests) or bool(self._tasks)

    async def drain(self) -> None:
        """Stop taking work, let what we hold finish (up to drain_timeout_s), then stop."""
        self.draining = True
        await self._publish_heartbeat()
        log.info("draining", in_flight=len(self.streams))
        deadline = time.monotonic() + self.drain_timeout_s
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.busy():
            log.warning("drain timeout; aborting what is left", in_flight=list(self.streams))
            for request_id in list(self.streams):
                await self.fail(request_id, "worker shut down before the request finished", 503)
        await self.close()

    async def close(self) -> None:
        self.acks.close()
        if self.routers is not None:
            await self.routers.stop()
        for background in (self._heartbeat_task, self._deadline_task):
            if background is not None:
                background.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.loop.stop()
        if self.nc is not None:
            await disconnect(self.nc)
        log.info("worker stopped")

    # -- heartbeats -----------------------------------------------------------------------

    def heartbeat(self) -> WorkerHeartbeat:
        e = self.engine
        return WorkerHeartbeat(
            worker_id=self.worker_id,
            role=self.role,
            pid=os.getpid(),
            host=socket.gethostname(),
            model=self.model_name,
            model_fingerprint=e.kv_layout.model_fingerprint,
            running=e.num_running,
            waiting=e.num_waiting,
            kv_blocks_used=e.kv_blocks_used,
            kv_blocks_total=e.kv_blocks_total,
            kv_block_size=e.kv_layout.block_size,
            max_model_len=e.max_model_len,
            sent_at=time.time(),
            ucx_address=self.ucx_address(),
            draining=self.draining,
            interval_s=self.heartbeat_s,
        )

    def ucx_address(self) -> str:
        return ""

    async def _publish_heartbeat(self) -> None:
        if self.nc is not None and self.nc.is_connected:
            await self.nc.publish(self.subjects.heartbeat, encode(self.heartbeat()))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._publish_heartbeat()
            except Exception as exc:  # the broker may be restarting; keep beating
                log.warning("heartbeat failed", error=repr(exc))
            await asyncio.sleep(self.heartbeat_s)

    # -- deadlines ----------------------------------------------------------------------------

    def watch_deadline(self, request_id: str, deadline: float) -> None:
        self.deadlines[request_id] = deadline

    async def _deadline_loop(self, period_s: float = 0.25) -> None:
        """End requests whose deadline passed here, or whose router has gone, so their blocks
        come back even when the router's cancel never arrives (router killed, broker down)."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self._end_orphans()
                await self._end_overdue()
            except Exception:  # one bad pass must not end the checks for good
                log.exception("deadline check failed")

    async def _end_overdue(self) -> None:
        now = time.time()
        for request_id, deadline in list(self.deadlines.items()):
            if request_id not in self.streams and request_id not in self.engine.requests:
                del self.deadlines[request_id]
            elif deadline < now:
                del self.deadlines[request_id]
                log.warning("deadline passed; ending request", request_id=request_id)
                await self.fail(request_id, f"request deadline passed on {self.role} worker {self.worker_id}", 504)

    async def _end_orphans(self) -> None:
        """Cancel the requests of routers that have gone (router_watch.py): nobody reads their
        tokens any more."""
        if self.routers is None:
            return
        for request_id, subject in list(self.streams.items()):
            router = self.subjects.router_of_stream(subject)
            if router is not None and self.routers.gone(router):
                self.counters["router_gone"] += 1
                log.warning("router gone; ending its request", request_id=request_id, router=router)
                await self.cancel(request_id)

    # -- messages -----------------------------------------------------------------------------

    async def reply(self, msg: Msg, message: object) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode(message))
                if self.nc is not None:
                    send_now(self.nc)

    async def refuse(self, msg: Msg, reason: str, code: int) -> None:
        self.counters["refused"] += 1
        await self.reply(msg, TaskAck(accepted=False, reason=reason, code=code, worker_id=self.worker_id))

    def malformed(self, subject: str, exc: ProtocolError) -> None:
        self.counters["malformed"] += 1
        log.warning("dropped malformed message", subject=subject, error=str(exc))

    async def publish_chunk(self, subject: str, chunk: TokenChunk, *, now: bool = True) -> None:
        """`now=False`: left buffered for whoever publishes more right after (one step's chunks
        go out together once the step's outputs are handled)."""
        assert self.nc is not None
        self.acks.answered(chunk.request_id)  # the chunk answers the task in place of its ack
        try:
            await self.nc.publish(subject, encode(chunk))
        except Exception as exc:
            log.warning("could not publish tokens", request_id=chunk.request_id, error=repr(exc))
        if now:
            send_now(self.nc)

    async def fail(self, request_id: str, message: str, code: int, index: int = 0) -> None:
        """End a request we hold with an error chunk and free its engine state."""
        subject = self.streams.pop(request_id, None)
        with contextlib.suppress(Exception):
            await self.loop.call(lambda: self.engine.abort_request(request_id))
        if subject is not None:
            await self.publish_chunk(subject, error_chunk(request_id, self.worker_id, message, code, index))

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decode(msg.data, CancelRequest)
        except ProtocolError as exc:
            self.malformed(msg.subject, exc)
            return
        if cancel.request_id in self.streams or cancel.request_id in self.engine.requests:
            self.counters["cancelled"] += 1
            log.info("cancel", request_id=cancel.request_id, reason=cancel.reason)
            await self.cancel(cancel.request_id)

    async def cancel(self, request_id: str) -> None:
        self.acks.answered(request_id)  # the router gave up on it; no ack needed
        self.streams.pop(request_id, None)
        await self.loop.call(lambda: self.engine.abort_request(request_id))

    @abc.abstractmethod
    async def _on_outputs(self, outputs: list[RequestOutput]) -> None:
        """Route one step's outputs (each worker kind does it its own way); chunks published
        with `now=False` go out together when it returns."""

    async def _handle_outputs(self, outputs: list[RequestOutput]) -> None:
        try:
            await self._on_outputs(outputs)
        finally:
            if self.nc is not None:
                send_now(self.nc)

    def admission_error(self) -> tuple[str, int] | None:
        """Why a new request cannot be taken right now, as (reason, HTTP-like code)."""
        if self.draining:
            return "worker is draining", 503
        if self.engine.num_waiting >= self.max_waiting:
            return f"worker queue is full ({self.engine.num_waiting} waiting)", 429
        return None
