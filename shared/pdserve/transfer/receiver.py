"""KvReceiver: the decode side of the transfer plane.

The decode worker admits an offer (over NATS), calls `expect` to reserve receive buffers and
get a Ticket, and publishes the ticket id and `address`. Prefill workers connect and push; for
every message the receiver checks, before accepting anything, that the ticket is live and
unclaimed, the layer count and byte sizes are the ticket's, and the layers come in order.
Receive buffers are sized from the ticket only, so a peer cannot make us allocate.

A rejected message is counted (stats.rejected), logged, answered with an error reply where the
connection still works, and ends the connection; a rejected message about a live ticket also
fails that ticket, so `wait` raises at once instead of at lease expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
from collections.abc import Sequence
from typing import Any

import structlog
import torch
import ucxx._lib.libucxx as ucx_api

from pdserve.errors import KvTransferError
from pdserve.transfer import runtime, wire
from pdserve.transfer.link import Link, LinkError, TruncatedError, settle
from pdserve.transfer.stats import ReceiverStats
from pdserve.transfer.tickets import Reservation, Ticket, TicketBook, TicketError

log = structlog.get_logger("pdserve.transfer.receiver")

# An error reply is best effort: the peer may be the reason we are replying.
_REPLY_TIMEOUT_S = 1.0
# A sender sends CONNECT right after connecting; a connection that does not is dropped.
_CONNECT_TIMEOUT_S = 5.0


class _Reject(Exception):
    def __init__(self, code: wire.Code, message: str) -> None:
        super().__init__(message)
        self.code = code


def _on_connect(conn_request: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[int]) -> None:
    """Called by UCX from inside worker progress: queue the connection request for `_accept`."""
    with contextlib.suppress(RuntimeError):  # loop closed: the receiver is gone
        loop.call_soon_threadsafe(queue.put_nowait, conn_request)


class KvReceiver:
    """One per decode worker process. Use from one event loop; `start()` before `expect()`.

    `host` is the address published to prefill workers (UCX listens on every interface);
    `port` 0 picks a free one. `error_handling` must match the senders' (UCX refuses a
    mismatch); see docs/transfer.md for why on is the default. A ticket's lease is
    `lease_timeout_s`; a connection idle for `idle_timeout_s` is closed (senders reconnect).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        error_handling: bool = True,
        lease_timeout_s: float = 10.0,
        idle_timeout_s: float = 120.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if not (idle_timeout_s > 0 and math.isfinite(idle_timeout_s)):
            raise ValueError(f"idle_timeout_s must be a positive number of seconds, got {idle_timeout_s!r}")
        self.host = host
        self.error_handling = error_handling
        self.idle_timeout_s = idle_timeout_s
        self.stats = ReceiverStats(error_handling=error_handling, transport={})
        self._book = TicketBook(lease_timeout_s, self.stats)
        self._port = port
        self._runtime: runtime.UcxRuntime | None = None
        self._listener: ucx_api.UCXListener | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: dict[Link, asyncio.Task[None]] = {}
        self._connection_ids: set[int] = set()
        self._numbers = itertools.count(1)

    @property
    def address(self) -> str:
        """ "host:port" for prefill workers; valid after start()."""
        if self._listener is None:
            raise KvTransferError("KvReceiver is not started")
        return f"{self.host}:{self._listener.port}"

    @property
    def lease_timeout_s(self) -> float:
        return self._book.lease_timeout_s

    @property
    def active_tickets(self) -> int:
        return len(self._book)

    def ticket_state(self, ticket_id: int) -> str | None:
        """ "waiting", "receiving" or "done" for a live ticket; None once it ended or if unknown."""
        return self._book.state(ticket_id)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def reserved_bytes(self) -> int:
        """Bytes of receive buffers held by live tickets."""
        return self._book.reserved_bytes

    async def start(self) -> None:
        if self._runtime is not None:
            raise KvTransferError("KvReceiver already started")
        rt = runtime.acquire()
        queue: asyncio.Queue[int] = asyncio.Queue()
        try:
            self._listener = ucx_api.UCXListener.create(
                worker=rt.worker,
                port=self._port,
                cb_func=_on_connect,
                cb_args=(asyncio.get_running_loop(), queue),
                deliver_endpoint=False,
            )
        except ucx_api.UCXError as exc:
            runtime.release(rt)
            raise KvTransferError(f"cannot listen for KV on port {self._port}: {exc}") from exc
        self._runtime = rt
        self._accept_task = asyncio.create_task(self._accept(queue), name="kv-receiver-accept")
        self.stats.transport = rt.info.as_dict(self.error_handling)
        log.info("kv receiver listening", address=self.address, **self.stats.transport)
        if self.error_handling and not rt.info.shm_error_handling:
            log.warning("kv transfers on this host will use TCP: UCX shared memory lacks error handling here")

    def expect(
        self,
        request_id: str,
        layer_shapes: Sequence[tuple[int, ...]],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> Ticket:
        """Reserve one receive tensor per layer for `request_id` and return its Ticket.

        The lease runs from now: unless a push completes and `wait` takes the KV within
        lease_timeout_s (plus one more lease to take it after it arrived), the ticket expires
        and its buffers are dropped. Call from the event loop.
        """
        if self._runtime is None:
            raise KvTransferError("KvReceiver is not started")
        return self._book.reserve(request_id, layer_shapes, dtype, torch.device(device))

    async def wait(self, ticket_id: int, timeout: float | None = None) -> list[torch.Tensor]:
        """The ticket's layers once every one arrived and was checked; ownership passes to the
        caller. Raises KvTransferError: expired, cancelled, a rejected message, the peer gone,
        or no KV within `timeout` seconds (then the ticket itself lives on until its lease)."""
        return await self._book.take(ticket_id, timeout)

    def cancel(self, ticket_id: int) -> None:
        """End the ticket now and drop its buffers (a receive in progress is aborted). No-op if gone."""
        if self._book.fail(ticket_id, wire.Code.CANCELLED, f"ticket {ticket_id} cancelled"):
            log.info("kv ticket cancelled", ticket=ticket_id)

    async def close(self) -> None:
        """Stop listening, fail every live ticket, close every connection. Idempotent."""
        rt, self._runtime = self._runtime, None
        if rt is None:
            return
        self._listener = None  # destroying the UCX listener frees the port
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        self._book.fail_all(wire.Code.CLOSING, "KV receiver closed")
        tasks = list(self._connections.values())
        for link, task in list(self._connections.items()):
            link.close()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        del tasks
        # The UCX listener (and its port) lives as long as any endpoint it accepted, and failed
        # asyncio tasks keep those in reference cycles: collect now, or a later listener on this
        # port would share it with a zombie that accepts and never answers (measured).
        gc.collect()
        runtime.release(rt)
        log.info("kv receiver closed", **self.stats.as_dict())

    async def _accept(self, queue: asyncio.Queue[int]) -> None:
        while True:
            self._admit(await queue.get())

    def _admit(self, conn_request: int) -> None:
        # A helper, not inline in _accept: a local left in that long-lived frame would keep the
        # last endpoint, and through it the UCX listener and its port, alive after close().
        listener = self._listener
        if listener is None:
            return
        peer = f"connection #{next(self._numbers)} to {self.address}"
        try:
            endpoint = listener.create_endpoint_from_conn_request(conn_request, self.error_handling)
        except ucx_api.UCXError as exc:
            log.warning("kv connection refused by UCX", peer=peer, error=str(exc))
            return
        self.stats.connections_accepted += 1
        assert self._runtime is not None
        link = Link(self._runtime, endpoint, peer)
        self._connections[link] = asyncio.create_task(self._serve(link), name=f"kv-receive {peer}")

    async def _serve(self, link: Link) -> None:
        """One connection: CONNECT, then transfers one after another until idle, closed or a failure."""
        connection_id: int | None = None
        try:
            connection_id = await self._handshake(link)
            while connection_id is not None:
                try:
                    hello = await asyncio.wait_for(link.recv_frame(wire.FrameKind.HELLO), self.idle_timeout_s)
                except TimeoutError:
                    log.debug("kv connection idle, closed", peer=link.peer)
                    return
                except wire.FrameError as exc:
                    await self._reject(link, None, 0, exc.code, str(exc))
                    return
                if not await self._transfer(link, hello):
                    return
        except LinkError as exc:
            log.debug("kv connection ended", peer=link.peer, error=str(exc))
        except Exception:
            log.exception("kv connection failed", peer=link.peer)
        finally:
            link.close()
            self._connections.pop(link, None)
            self._connection_ids.discard(connection_id)

    async def _handshake(self, link: Link) -> int | None:
        """The connection id from the sender's CONNECT frame, or None (counted, logged) if unusable."""
        try:
            connection_id = await asyncio.wait_for(link.accept_connect(), _CONNECT_TIMEOUT_S)
        except (TimeoutError, wire.FrameError) as exc:
            code = exc.code if isinstance(exc, wire.FrameError) else wire.Code.TIMEOUT
            self.stats.rejected[code.reason] += 1
            log.warning("kv connection without a valid CONNECT", peer=link.peer, reason=code.reason)
            return None
        if connection_id in self._connection_ids:
            # Tags are matched worker-wide: a second connection with this id could read the first's frames.
            self.stats.rejected[wire.Code.BAD_KIND.reason] += 1
            log.warning("kv connection reuses a live connection id", peer=link.peer)
            return None
        self._connection_ids.add(connection_id)
        link.use_tags(wire.reply_tag(connection_id), wire.frame_tag(connection_id))
        return connection_id

    async def _transfer(self, link: Link, hello: wire.Frame) -> bool:
        """Receive one ticket's KV; True if the connection may carry another transfer."""
        # A push refused at its HELLO leaves the connection as clean as before it: the sender
        # posts its layers only after our "ready". So the connection stays, for the pushes queued
        # behind this one (a cancelled request's ticket must not fail every push in flight).
        try:
            res = self._book.claim(hello.ticket_id, abort=lambda: self._abort(link))
        except TicketError as exc:
            await self._reject(link, None, hello.ticket_id, exc.code, str(exc))
            return True
        ticket = res.ticket
        try:
            self._check_hello(ticket, hello)
        except _Reject as exc:
            await self._reject(link, res, ticket.id, exc.code, str(exc))
            return True
        posted: list[asyncio.Task[Any]] = []
        try:
            async with asyncio.timeout_at(ticket.deadline):
                # Post every receive before saying "ready", sized from the ticket alone: payloads
                # then land in place (no unexpected-message path) and frames are checked as they come.
                payloads = [
                    link.post_recv_tensor(layer, wire.payload_tag(ticket.id, index))
                    for index, layer in enumerate(res.layers)
                ]
                frames = [link.post_recv_frame(wire.FrameKind.LAYER) for _ in payloads]
                posted = payloads + frames
                await link.send_frame(wire.reply(ticket.id, wire.Code.OK, "ready"))
                for index, (nbytes, frame) in enumerate(zip(ticket.layer_nbytes, frames, strict=True)):
                    self._check_layer(ticket, index, nbytes, await frame)
                await _all_or_first_error(payloads)
        except wire.FrameError as exc:
            await self._reject(link, res, ticket.id, exc.code, str(exc))
            return False
        except _Reject as exc:
            await self._reject(link, res, ticket.id, exc.code, str(exc))
            return False
        except TruncatedError as exc:
            await self._reject(link, res, ticket.id, wire.Code.PAYLOAD, str(exc))
            return False
        except TimeoutError:
            await self._reject(link, res, ticket.id, wire.Code.EXPIRED_TICKET, f"ticket {ticket.id} expired mid-push")
            return False
        except LinkError as exc:
            self._end(res, wire.Code.PEER, f"connection failed during push: {exc}")
            raise
        finally:
            await settle(task for task in posted if not task.done())
        if not self._book.complete(res):
            # Cancelled or expired after the last byte arrived: the sender must not count it as delivered.
            await self._reply_error(link, ticket.id, wire.Code.CANCELLED, f"ticket {ticket.id} ended before accept")
            return False
        log.debug("kv received", ticket=ticket.id, request_id=ticket.request_id, bytes=ticket.total_nbytes)
        try:
            await asyncio.wait_for(link.send_frame(wire.reply(ticket.id, wire.Code.OK, "accepted")), _REPLY_TIMEOUT_S)
        except (LinkError, TimeoutError) as exc:
            # The KV is here and will be used; only the sender will not hear so.
            log.warning("kv accepted but the sender could not be told", ticket=ticket.id, error=str(exc))
            return False
        return True

    @staticmethod
    def _check_hello(ticket: Ticket, hello: wire.Frame) -> None:
        if hello.value != len(ticket.layer_nbytes):
            raise _Reject(wire.Code.LAYER_COUNT, f"push of {hello.value} layers, ticket has {len(ticket.layer_nbytes)}")
        if hello.nbytes != ticket.total_nbytes:
            raise _Reject(wire.Code.TOTAL_SIZE, f"push of {hello.nbytes} bytes, ticket has {ticket.total_nbytes}")

    @staticmethod
    def _check_layer(ticket: Ticket, index: int, nbytes: int, frame: wire.Frame) -> None:
        if frame.ticket_id != ticket.id:
            raise _Reject(wire.Code.UNKNOWN_TICKET, f"layer for ticket {frame.ticket_id} inside push of {ticket.id}")
        if frame.value != index:
            raise _Reject(wire.Code.LAYER_ORDER, f"layer {frame.value} arrived, expected layer {index}")
        if frame.nbytes != nbytes:
            raise _Reject(wire.Code.LAYER_SIZE, f"layer {index}: {frame.nbytes} bytes, ticket has {nbytes}")

    async def _reject(self, link: Link, res: Reservation | None, ticket_id: int, code: wire.Code, message: str) -> None:
        self.stats.rejected[code.reason] += 1
        log.warning("kv message rejected", peer=link.peer, ticket=ticket_id, reason=code.reason, detail=message)
        if res is not None:
            self._end(res, code, message)  # first, so that the ticket is over once the sender hears why
        await self._reply_error(link, ticket_id, code, message)

    def _end(self, res: Reservation, code: wire.Code, message: str) -> None:
        # Detach first: this connection closes its own endpoint before the buffers can go.
        res.abort = None
        self._book.fail(res.ticket.id, code, message)

    async def _reply_error(self, link: Link, ticket_id: int, code: wire.Code, message: str) -> None:
        with contextlib.suppress(LinkError, TimeoutError):
            await asyncio.wait_for(link.send_frame(wire.reply(ticket_id, code, message)), _REPLY_TIMEOUT_S)

    def _abort(self, link: Link) -> None:
        """A ticket this connection is filling ended (cancel, expiry): stop UCX touching its buffers."""
        link.close()
        task = self._connections.get(link)
        if task is not None and task is not asyncio.current_task():
            task.cancel()


async def _all_or_first_error(tasks: list[asyncio.Task[None]]) -> None:
    """Await every task; on the first failure raise it (the caller cancels the rest)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
