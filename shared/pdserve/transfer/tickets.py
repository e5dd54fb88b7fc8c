"""Tickets: leases on receive buffers, one per admitted request.

A ticket is WAITING (buffers reserved, no push yet), RECEIVING (one connection is filling its
buffers), DONE (every layer arrived and was checked; waiting for `take`) or gone. Every ticket
ends exactly once: taken, failed, cancelled or expired. When it ends any other way than taken,
its buffers are dropped; a connection still receiving into them is aborted first (its `abort`
closes the UCX endpoint before the buffers can be freed).
"""

from __future__ import annotations

import asyncio
import enum
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pdserve.errors import KvTransferError
from pdserve.transfer.stats import ReceiverStats
from pdserve.transfer.wire import MAX_LAYERS, Code

_HISTORY = 4096  # ended tickets remembered, so that a late push hears "expired", not "unknown"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the decode worker hands to the prefill worker. `id` is random (63 bits) and is the
    only credential a push needs; `deadline` is on the event loop's clock (time.monotonic(), s)."""

    id: int
    request_id: str
    deadline: float
    layer_nbytes: tuple[int, ...]

    @property
    def total_nbytes(self) -> int:
        return sum(self.layer_nbytes)


class TicketError(KvTransferError):
    """A ticket ended without its KV; `code` says how (expired, cancelled, a rejected message...)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


class State(enum.Enum):
    WAITING = "waiting"
    RECEIVING = "receiving"
    DONE = "done"


@dataclass(slots=True, eq=False)
class Reservation:
    ticket: Ticket
    layers: list[torch.Tensor]
    state: State = State.WAITING
    error: TicketError | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    abort: Callable[[], None] | None = None  # set while a connection receives into it
    waited: bool = False


class TicketBook:
    """All live tickets of one receiver. Not thread-safe: use from the event loop only."""

    def __init__(self, lease_timeout_s: float, stats: ReceiverStats) -> None:
        if not (lease_timeout_s > 0 and math.isfinite(lease_timeout_s)):
            raise ValueError(f"lease_timeout_s must be a positive number of seconds, got {lease_timeout_s!r}")
        self.lease_timeout_s = lease_timeout_s
        self.stats = stats
        self._live: dict[int, Reservation] = {}
        self._ended: OrderedDict[int, tuple[Code, str]] = OrderedDict()  # id -> how it ended

    def __len__(self) -> int:
        return len(self._live)

    @property
    def reserved_bytes(self) -> int:
        return sum(r.ticket.total_nbytes for r in self._live.values())

    def state(self, ticket_id: int) -> str | None:
        res = self._live.get(ticket_id)
        return None if res is None else res.state.value

    def reserve(
        self, request_id: str, layer_shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, device: torch.device
    ) -> Ticket:
        """Allocate one empty tensor per layer and lease them for lease_timeout_s."""
        if not 0 < len(layer_shapes) <= MAX_LAYERS:
            raise KvTransferError(f"a ticket needs 1..{MAX_LAYERS} layers, got {len(layer_shapes)}")
        shapes = [tuple(int(d) for d in shape) for shape in layer_shapes]
        if any(len(s) == 0 or min(s) <= 0 for s in shapes):
            raise KvTransferError(f"every layer shape needs positive sizes, got {shapes}")
        layers = [torch.empty(shape, dtype=dtype, device=device) for shape in shapes]
        loop = asyncio.get_running_loop()
        ticket_id = self._new_id()
        ticket = Ticket(
            id=ticket_id,
            request_id=request_id,
            deadline=loop.time() + self.lease_timeout_s,
            layer_nbytes=tuple(t.numel() * t.element_size() for t in layers),
        )
        res = Reservation(ticket, layers)
        res.timer = loop.call_at(ticket.deadline, self._expire, res)
        self._live[ticket_id] = res
        return ticket

    def _new_id(self) -> int:
        while True:
            ticket_id = secrets.randbits(63)
            if ticket_id and ticket_id not in self._live and ticket_id not in self._ended:
                return ticket_id

    def claim(self, ticket_id: int, abort: Callable[[], None]) -> Reservation:
        """For a connection about to receive: WAITING -> RECEIVING. Raises TicketError whose code
        is the reply to send (unknown, expired, busy)."""
        res = self._live.get(ticket_id)
        if res is None:
            code, message = self._ended.get(ticket_id, (None, ""))
            if code is Code.EXPIRED_TICKET:
                raise TicketError(code, message)
            if code is not None:
                raise TicketError(Code.UNKNOWN_TICKET, f"ticket {ticket_id} already ended: {message}")
            raise TicketError(Code.UNKNOWN_TICKET, f"unknown ticket {ticket_id}")
        if res.state is not State.WAITING:
            raise TicketError(Code.TICKET_BUSY, f"ticket {ticket_id} is {res.state.value}")
        res.state = State.RECEIVING
        res.abort = abort
        return res

    def complete(self, res: Reservation) -> bool:
        """RECEIVING -> DONE; False when the ticket ended meanwhile (expired, cancelled)."""
        if res.state is not State.RECEIVING or self._live.get(res.ticket.id) is not res:
            return False
        res.state = State.DONE
        res.abort = None
        self.stats.transfers_ok += 1
        self.stats.bytes_received += res.ticket.total_nbytes
        res.ended.set()
        # Kept for one more lease for wait() to take; after that nobody is coming for it.
        if res.timer is not None:
            res.timer.cancel()
        res.timer = asyncio.get_running_loop().call_later(self.lease_timeout_s, self._expire, res)
        return True

    def fail(self, ticket_id: int, code: Code, message: str) -> bool:
        """End a live ticket with an error, dropping its buffers; False if it was not live."""
        res = self._live.pop(ticket_id, None)
        if res is None:
            return False
        if res.timer is not None:
            res.timer.cancel()
        abort, res.abort = res.abort, None
        if abort is not None:
            abort()  # closes the endpoint receiving into these buffers before they are dropped
        res.layers = []
        res.error = TicketError(code, message)
        self._remember(ticket_id, code, message)
        if res.state is not State.DONE:
            self.stats.transfers_failed += 1
        if code is Code.EXPIRED_TICKET:
            self.stats.expired += 1
        elif code is Code.CANCELLED:
            self.stats.cancelled += 1
        res.ended.set()
        return True

    async def take(self, ticket_id: int, timeout: float | None) -> list[torch.Tensor]:
        """Wait for the ticket to end; return its layers (ownership passes to the caller) or raise."""
        res = self._live.get(ticket_id)
        if res is None:
            code, message = self._ended.get(ticket_id, (Code.UNKNOWN_TICKET, f"unknown ticket {ticket_id}"))
            raise TicketError(code, message)
        if res.waited:
            raise KvTransferError(f"ticket {ticket_id} already has a waiter")
        res.waited = True
        try:
            await asyncio.wait_for(res.ended.wait(), timeout)
        except TimeoutError:
            raise KvTransferError(f"ticket {ticket_id}: no KV within {timeout} s (the lease still runs)") from None
        finally:
            res.waited = False
        if res.error is not None:
            raise res.error
        self._live.pop(ticket_id, None)
        if res.timer is not None:
            res.timer.cancel()
        self._remember(ticket_id, Code.OK, "KV already taken")
        layers, res.layers = res.layers, []
        return layers

    def _expire(self, res: Reservation) -> None:
        if self._live.get(res.ticket.id) is res:
            what = "KV was not collected" if res.state is State.DONE else "KV did not arrive"
            self.fail(res.ticket.id, Code.EXPIRED_TICKET, f"ticket {res.ticket.id} expired: {what} in time")

    def _remember(self, ticket_id: int, code: Code, message: str) -> None:
        self._ended[ticket_id] = (code, message)
        while len(self._ended) > _HISTORY:
            self._ended.popitem(last=False)

    def fail_all(self, code: Code, message: str) -> None:
        for ticket_id in list(self._live):
            self.fail(ticket_id, code, message)
