"""KvSender: the prefill side of the transfer plane.

`push` sends one request's KV to a decode worker's KvReceiver against the ticket that worker
handed out, layer by layer, and returns once the receiver has checked and accepted every
layer. One UCX endpoint per peer address is reused; pushes to the same peer take turns on it
(one push already keeps every layer in flight at once). On any error the endpoint is closed
and forgotten, never reused: a peer that restarted gets a fresh one. The exception is a push
the receiver refuses at its HELLO (an unknown, cancelled or expired ticket, wrong sizes): no
layer was sent, so the link is as clean as before and the pushes queued behind it keep it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import structlog
import torch
import ucxx._lib.libucxx as ucx_api

from pdserve.errors import KvTransferError
from pdserve.transfer import runtime, wire
from pdserve.transfer.link import Link, LinkError, settle
from pdserve.transfer.stats import SenderStats

log = structlog.get_logger("pdserve.transfer.sender")


class PushRefused(KvTransferError):
    """The receiver refused the push; `code` says why (unknown or expired ticket, wrong sizes...).
    `at_hello`: refused before any layer was sent, which leaves the link usable."""

    def __init__(self, code: wire.Code, message: str, at_hello: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.at_hello = at_hello


# Pushes queued on a link that another push's failure closed move to a fresh link, this many
# times at most (each move follows a failure of some push ahead of this one, never its own).
MAX_LINK_TRIES = 8


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") -> (host, port); raises KvTransferError if malformed."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise KvTransferError(f"bad KV receiver address {address!r}: expected host:port")
    return host, int(port_text)


class KvSender:
    """One per prefill worker process; use from one event loop.

    `error_handling` must match the receivers'. An endpoint unused for `max_idle_s` is replaced
    before the next push (receivers close idle connections after their idle_timeout_s, 120 s
    by default, so keep this below that).
    """

    def __init__(self, *, error_handling: bool = True, max_idle_s: float = 60.0) -> None:
        if not (max_idle_s > 0 and math.isfinite(max_idle_s)):
            raise ValueError(f"max_idle_s must be a positive number of seconds, got {max_idle_s!r}")
        self.error_handling = error_handling
        self.max_idle_s = max_idle_s
        self.stats = SenderStats(error_handling=error_handling)
        self._runtime: runtime.UcxRuntime | None = None
        self._links: dict[str, Link] = {}
        self._closed = False

    async def push(self, address: str, ticket_id: int, layers: Sequence[torch.Tensor], timeout: float = 10.0) -> float:
        """Push `layers` (contiguous tensors, CPU or CUDA, each exactly as the ticket sized it)
        to the receiver at `address`; return the seconds it took, connecting included.

        Raises KvTransferError on any failure: refused (PushRefused, with the receiver's code and
        reason), no completion within `timeout` seconds, the peer dead or gone, bad arguments.
        The tensors must stay unchanged until push returns or raises.
        """
        if self._closed:
            raise KvTransferError("KvSender is closed")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise KvTransferError(f"push timeout must be a positive number of seconds, got {timeout!r}")
        if not 0 < ticket_id < 2**64:
            raise KvTransferError(f"ticket id {ticket_id} out of range")
        if not 0 < len(layers) <= wire.MAX_LAYERS:
            raise KvTransferError(f"a push needs 1..{wire.MAX_LAYERS} layers, got {len(layers)}")
        if not all(t.is_contiguous() and t.numel() > 0 for t in layers):
            raise KvTransferError("every KV layer must be a non-empty contiguous tensor")
        parse_address(address)
        started = time.perf_counter()
        if any(t.is_cuda for t in layers):
            # UCX reads device memory on its own streams: the kernels that wrote it must be done.
            await asyncio.to_thread(torch.cuda.synchronize, next(t.device for t in layers if t.is_cuda))
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(MAX_LINK_TRIES):
                    link = self._link(address)
                    async with link.lock:
                        if not link.alive and attempt < MAX_LINK_TRIES - 1:
                            continue  # broke while we queued (a push ahead of ours failed): a fresh link
                        try:
                            await self._transfer(link, ticket_id, layers)
                        except PushRefused as exc:
                            if not exc.at_hello:
                                self._drop(address, link)
                            raise
                        except BaseException:
                            self._drop(address, link)
                            raise
                        break
        except TimeoutError:
            self._failed("timeout")
            raise KvTransferError(f"KV push of ticket {ticket_id} to {address} timed out after {timeout} s") from None
        except PushRefused as exc:
            self._failed(exc.code.reason)
            raise
        except wire.FrameError as exc:
            self._failed("protocol")
            raise KvTransferError(f"KV push to {address}: malformed reply: {exc}") from exc
        except LinkError as exc:
            self._failed("peer")
            raise KvTransferError(f"KV push of ticket {ticket_id} to {address} failed: {exc}") from exc
        self.stats.pushes_ok += 1
        self.stats.bytes_sent += sum(t.numel() * t.element_size() for t in layers)
        return time.perf_counter() - started

    async def _transfer(self, link: Link, ticket_id: int, layers: Sequence[torch.Tensor]) -> None:
        sizes = [t.numel() * t.element_size() for t in layers]
        await link.opened()
        await link.send_frame(wire.hello(ticket_id, len(layers), sum(sizes)))
        try:
            _check_reply(await link.recv_frame(wire.FrameKind.REPLY), ticket_id, link.peer)
        except PushRefused as exc:
            exc.at_hello = True  # nothing of ours is in flight: the link stays for the next push
            raise
        # Post every layer now (frames keep their order on the stream); the verdict may come early
        # (a rejected layer), so wait for it and the sends together.
        posted: list[asyncio.Task[Any]] = []
        for index, (tensor, nbytes) in enumerate(zip(layers, sizes, strict=True)):
            posted.append(link.post_send_frame(wire.layer(ticket_id, index, nbytes)))
            posted.append(link.post_send_tensor(tensor, wire.payload_tag(ticket_id, index)))
        verdict = link.post_recv_frame(wire.FrameKind.REPLY)
        pending: set[asyncio.Task[Any]] = {verdict, *posted}
        try:
            while verdict in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if verdict in done:
                    _check_reply(verdict.result(), ticket_id, link.peer)
                for task in done:
                    task.result()
            await asyncio.gather(*pending)
        finally:
            await settle(task for task in pending if not task.done())

    def _link(self, address: str) -> Link:
        link = self._links.get(address)
        if link is not None and link.alive and time.monotonic() - link.last_used < self.max_idle_s:
            return link
        if link is not None:
            self._drop(address, link)
        if self._runtime is None:
            self._runtime = runtime.acquire()
            self.stats.transport = self._runtime.info.as_dict(self.error_handling)
            log.info("kv sender ready", **self.stats.transport)
        host, port = parse_address(address)
        try:
            endpoint = ucx_api.UCXEndpoint.create(self._runtime.worker, host, port, self.error_handling)
        except ucx_api.UCXError as exc:
            raise LinkError(f"cannot connect to {address}: {exc}") from exc
        self.stats.endpoints_created += 1
        link = Link(self._runtime, endpoint, address)
        link.open_as_sender(secrets.randbits(wire.CONNECTION_ID_BITS))
        self._links[address] = link
        return link

    def _drop(self, address: str, link: Link) -> None:
        link.close()
        if self._links.get(address) is link:
            del self._links[address]
            self.stats.endpoints_dropped += 1

    def _failed(self, cause: str) -> None:
        self.stats.pushes_failed += 1
        self.stats.failures[cause] += 1

    async def close(self) -> None:
        """Close every endpoint. Pushes in flight fail. Idempotent."""
        self._closed = True
        for address, link in list(self._links.items()):
            self._drop(address, link)
        rt, self._runtime = self._runtime, None
        if rt is not None:
            runtime.release(rt)


def _check_reply(frame: wire.Frame, ticket_id: int, peer: str) -> None:
    if frame.ticket_id != ticket_id:
        raise wire.FrameError(wire.Code.UNKNOWN_TICKET, f"reply for ticket {frame.ticket_id}, expected {ticket_id}")
    if frame.value != wire.Code.OK:
        code = wire.Code(frame.value)
        raise PushRefused(code, f"{peer} refused ticket {ticket_id}: {code.reason}: {frame.reason}")
