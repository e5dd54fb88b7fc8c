"""One UCX endpoint as an async link: fixed-size control frames and tensors, all by tag.

The rule this class protects: memory handed to UCX stays alive until UCX is done with it.
A request that is abandoned (timeout, cancel) is still posted, so UCX may still write into or
read from its buffer; such buffers stay pinned until the request completes, which close()
forces by closing the endpoint (UCX then cancels it). After any failure the link is closed,
never reused.

Only the CONNECT frame travels on the UCX stream (see wire.py for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import ucxx._lib.libucxx as ucx_api
from ucxx._lib.arr import Array

from pdserve.errors import KvTransferError
from pdserve.transfer import wire
from pdserve.transfer.runtime import UcxRuntime

# close_blocking progresses the worker until the endpoint is closed, at most this long
# (measured: ~1 us to ~1 ms). ucxx's non-blocking close() crashed (segfault) on an endpoint
# whose peer had already gone.
_CLOSE_PERIOD_NS = 100_000_000

# Requests still in flight when their link closed, kept with their buffers until UCX reports
# them done: leaking a buffer is better than UCX writing into freed memory.
_orphans: list[tuple[Any, Array]] = []
_PRUNE_EVERY_S = 0.05


class LinkError(KvTransferError):
    """UCX reported a failure on the endpoint (peer gone, reset, cancelled)."""


class TruncatedError(LinkError):
    """A tagged message was longer than the buffer posted for it; UCX wrote nothing past it."""


def wire_buffer(tensor: torch.Tensor) -> Array:
    """A zero-copy byte view of a contiguous tensor that ucxx accepts, CPU or CUDA, any dtype.

    ucxx takes the buffer protocol (CPU) or __cuda_array_interface__ (CUDA), not CPU tensors,
    and numpy has no bfloat16: a flat uint8 view works for every case.
    """
    if not tensor.is_contiguous():
        raise KvTransferError(f"KV tensors must be contiguous (shape {tuple(tensor.shape)})")
    flat = tensor.reshape(-1).view(torch.uint8)
    return Array(flat if flat.is_cuda else flat.numpy())


class Link:
    """An open UCX endpoint to `peer` ("host:port" or a description, for messages).

    Frames go out with tag `send_tag` and are received with `recv_tag`; a receiver learns them
    from the sender's CONNECT frame (`accept_connect`) and sets them with `use_tags`.
    """

    def __init__(
        self, rt: UcxRuntime, endpoint: ucx_api.UCXEndpoint, peer: str, send_tag: int = 0, recv_tag: int = 0
    ) -> None:
        self._rt = rt
        self._ep: ucx_api.UCXEndpoint | None = endpoint
        self.peer = peer
        self.send_tag = send_tag
        self.recv_tag = recv_tag
        self.last_used = time.monotonic()
        self.lock = asyncio.Lock()  # one transfer at a time per link
        # id -> (request, buffer) for every request UCX may still touch
        self._inflight: dict[int, tuple[Any, Array]] = {}
        self._opening: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._ep is None

    @property
    def alive(self) -> bool:
        """Open and not known to be broken. With peer error handling UCX notices a peer that
        closed or died and clears this; without it a dead peer shows only as a timeout."""
        return self._ep is not None and bool(self._ep.alive)

    def use_tags(self, send_tag: int, recv_tag: int) -> None:
        self.send_tag, self.recv_tag = send_tag, recv_tag

    # post_* hand the operation to UCX now (so that frames keep their order) and return a task
    # that finishes when UCX is done with it; send_frame/recv_frame post and wait.

    def open_as_sender(self, connection_id: int) -> None:
        """Send CONNECT and take the connection's tags; `opened()` reports how the send went."""
        self.use_tags(wire.frame_tag(connection_id), wire.reply_tag(connection_id))
        self._opening = self._post(lambda ep, arr: ep.stream_send(arr), Array(wire.connect(connection_id)))

    async def opened(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            await opening

    async def accept_connect(self) -> int:
        """The connection id from the peer's CONNECT frame; raises wire.FrameError if malformed."""
        buf = bytearray(wire.FRAME_BYTES)
        await self._post(lambda ep, arr: ep.stream_recv(arr), Array(buf))
        return wire.decode(buf, wire.FrameKind.CONNECT).ticket_id

    def post_send_frame(self, frame: bytearray) -> asyncio.Task[None]:
        return self._post(lambda ep, arr: ep.tag_send(arr, ucx_api.UCXXTag(self.send_tag)), Array(frame))

    def post_recv_frame(self, kind: wire.FrameKind) -> asyncio.Task[wire.Frame]:
        """Receive exactly one frame of `kind`; the task raises wire.FrameError if it is malformed."""
        buf = bytearray(wire.REPLY_BYTES if kind is wire.FrameKind.REPLY else wire.FRAME_BYTES)
        done = self._post(lambda ep, arr: ep.tag_recv(arr, ucx_api.UCXXTag(self.recv_tag)), Array(buf))
        return asyncio.ensure_future(_decoded(done, buf, kind))

    def post_send_tensor(self, tensor: torch.Tensor, tag: int) -> asyncio.Task[None]:
        return self._post(lambda ep, arr: ep.tag_send(arr, ucx_api.UCXXTag(tag)), wire_buffer(tensor))

    def post_recv_tensor(self, tensor: torch.Tensor, tag: int) -> asyncio.Task[None]:
        """Receive into `tensor`. UCX fails a longer message (TruncatedError) and never writes past
        it; a shorter one cannot be told apart with ucxx 0.52, which is why LAYER frames carry nbytes."""
        return self._post(lambda ep, arr: ep.tag_recv(arr, ucx_api.UCXXTag(tag)), wire_buffer(tensor))

    async def send_frame(self, frame: bytearray) -> None:
        await self.post_send_frame(frame)

    async def recv_frame(self, kind: wire.FrameKind) -> wire.Frame:
        return await self.post_recv_frame(kind)

    def _post(self, post: Callable[[Any, Array], Any], arr: Array) -> asyncio.Task[None]:
        if self._ep is None:
            raise LinkError(f"link to {self.peer} is closed")
        self.last_used = time.monotonic()
        try:
            request = post(self._ep, arr)
        except ucx_api.UCXError as exc:
            raise LinkError(f"UCX to {self.peer}: {exc or type(exc).__name__}") from exc
        key = id(request)
        self._inflight[key] = (request, arr)
        return asyncio.ensure_future(self._finish(key, request, arr.nbytes))

    async def _finish(self, key: int, request: Any, nbytes: int) -> None:
        failure: LinkError | None = None
        try:
            await self._rt.watch(request)
        except asyncio.CancelledError:
            raise  # still posted: stays pinned until it completes (close() makes it)
        except ucx_api.UCXMessageTruncatedError:
            failure = TruncatedError(f"message from {self.peer} longer than the {nbytes} bytes expected")
        except ucx_api.UCXError as exc:
            failure = LinkError(f"UCX to {self.peer}: {exc or type(exc).__name__}")
        self._inflight.pop(key, None)
        self.last_used = time.monotonic()
        del request  # raised outside the except clause, the error keeps no UCX object alive
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Close the endpoint; UCX cancels whatever is still in flight. Idempotent."""
        ep, self._ep = self._ep, None
        if ep is None:
            return
        with contextlib.suppress(Exception):  # closing a failed endpoint may report that failure again
            ep.close_blocking(period=_CLOSE_PERIOD_NS, max_attempts=1)
        pending = [entry for entry in self._inflight.values() if not entry[0].completed]
        self._inflight.clear()
        if pending:
            _adopt(pending)
        if self._opening is not None and self._opening.done():
            self._opening.exception()  # retrieved: its failure is the link's, already handled
            self._opening = None


def _adopt(entries: list[tuple[Any, Array]]) -> None:
    if not _orphans:
        with contextlib.suppress(RuntimeError):  # no loop: pruned by the next close that has one
            asyncio.get_running_loop().call_later(_PRUNE_EVERY_S, _prune)
    _orphans.extend(entries)


def _prune() -> None:
    _orphans[:] = [entry for entry in _orphans if not entry[0].completed]
    if _orphans:
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to run UCX anyway
            asyncio.get_running_loop().call_later(_PRUNE_EVERY_S, _prune)


async def _decoded(done: asyncio.Task[None], buf: bytearray, kind: wire.FrameKind) -> wire.Frame:
    try:
        await done
    except TruncatedError:
        raise wire.FrameError(wire.Code.BAD_KIND, f"{kind.name} frame longer than {len(buf)} bytes") from None
    return wire.decode(buf, kind)


async def settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel what is still running and collect every outcome, so nothing is left unretrieved."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
