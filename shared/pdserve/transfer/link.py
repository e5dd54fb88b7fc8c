"""One UCX endpoint as an async link: fixed-size control frames on its stream, tensors by tag.

The rule this class protects: memory handed to UCX stays alive until UCX is done with it.
A request that is abandoned (timeout, cancel) is still posted, so UCX may still write into or
read from its buffer; such buffers stay pinned until close() has closed the endpoint, which
cancels every request still in flight. After any failure the link is closed, never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import ucxx._lib.libucxx as ucx_api
from ucxx._lib.arr import Array

from pdserve.errors import KvTransferError
from pdserve.transfer import wire

# Requests that close() could not confirm cancelled, kept with their buffers: leaking a buffer
# is better than UCX writing into freed memory. Pruned as they complete.
_orphans: list[tuple[Any, Array]] = []

# close_blocking waits for the progress thread; bounded so that a wedged peer cannot stall the
# event loop (measured: ~1 us to ~1 ms).
_CLOSE_PERIOD_NS = 100_000_000


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
    """An open UCX endpoint to `peer` ("host:port" or a description, for messages)."""

    def __init__(self, endpoint: ucx_api.UCXEndpoint, peer: str) -> None:
        self._ep: ucx_api.UCXEndpoint | None = endpoint
        self.peer = peer
        self.last_used = time.monotonic()
        self.lock = asyncio.Lock()  # one transfer at a time per link
        # id -> (request, buffer) for every request UCX may still touch
        self._inflight: dict[int, tuple[Any, Array]] = {}

    @property
    def closed(self) -> bool:
        return self._ep is None

    @property
    def alive(self) -> bool:
        """Open and not known to be broken. With peer error handling UCX notices a peer that
        closed or died and clears this; without it a dead peer shows only as a timeout."""
        return self._ep is not None and bool(self._ep.alive)

    # post_* hand the operation to UCX now (so operations on one stream keep their order) and
    # return a task that finishes when UCX is done; send_frame/recv_frame post and wait.

    def post_send_frame(self, frame: bytearray) -> asyncio.Task[None]:
        return self._post(lambda ep, arr: ep.stream_send(arr), Array(frame))

    def post_recv_frame(self, kind: wire.FrameKind) -> asyncio.Task[wire.Frame]:
        """Receive exactly one frame of `kind`; the task raises wire.FrameError if it is malformed."""
        buf = bytearray(wire.REPLY_BYTES if kind is wire.FrameKind.REPLY else wire.FRAME_BYTES)
        done = self._post(lambda ep, arr: ep.stream_recv(arr), Array(buf))
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
        return asyncio.ensure_future(self._finish(key, request, arr))

    async def _finish(self, key: int, request: Any, arr: Array) -> None:
        try:
            await request.wait()
        except asyncio.CancelledError:
            raise  # still posted: stays pinned until close()
        except ucx_api.UCXMessageTruncatedError as exc:
            self._inflight.pop(key, None)
            raise TruncatedError(f"message from {self.peer} longer than the {arr.nbytes} bytes expected") from exc
        except ucx_api.UCXError as exc:
            self._inflight.pop(key, None)
            raise LinkError(f"UCX to {self.peer}: {exc or type(exc).__name__}") from exc
        self._inflight.pop(key, None)
        self.last_used = time.monotonic()

    def close(self) -> None:
        """Close the endpoint (cancelling whatever is in flight), then unpin its buffers. Idempotent."""
        ep, self._ep = self._ep, None
        if ep is None:
            return
        try:
            ep.close_blocking(period=_CLOSE_PERIOD_NS, max_attempts=1)
        except Exception:  # closing a failed endpoint may report that failure again
            pass
        finally:
            _orphans[:] = [entry for entry in _orphans if not entry[0].completed]
            _orphans.extend(entry for entry in self._inflight.values() if not entry[0].completed)
            self._inflight.clear()


async def _decoded(done: asyncio.Task[None], buf: bytearray, kind: wire.FrameKind) -> wire.Frame:
    await done
    return wire.decode(buf, kind)


async def settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel what is still running and collect every outcome, so nothing is left unretrieved."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
