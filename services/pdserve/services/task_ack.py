"""Acknowledging a task: at once, or by its first chunk when that comes soon.

The router takes the first message a worker sends on the request's stream subject as its
answer: a TaskAck, or a token chunk (only an accepting worker sends tokens, and the broker keeps
one publisher's order). When the task's reply subject *is* its stream subject, an accepting
worker holds the ack back for a short grace; if the request's first chunk is published within
it, the chunk answers and the ack is never sent. A short request then costs one message less
each way through the broker, and one wake-up less of router and broker on the critical path.
When the grace runs out first (a long prefill, a busy engine), the ack goes out as before; the
grace is a small fraction of the router's ack timeout, so fail-over is not slowed.

A task whose reply subject differs from its stream subject (a router that waits for the ack on
an inbox of its own) is acknowledged at once: a chunk on the stream subject would not reach it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from pdserve.protocol import TaskAck

# Long enough for a short prompt's first step on a CPU, and 40 times shorter than the router's
# ack timeout (TASK_ACK_TIMEOUT_S, 2 s).
ACK_GRACE_S = 0.05


class PendingAcks:
    """Acks held back until their request's first chunk, or until the grace runs out."""

    def __init__(
        self, send: Callable[[Msg, TaskAck], Coroutine[Any, Any, None]], spawn: Callable[..., None], grace_s: float
    ) -> None:
        self._send = send
        self._spawn = spawn
        self.grace_s = grace_s
        self._held: dict[str, asyncio.TimerHandle] = {}

    async def ack(self, request_id: str, msg: Msg, ack: TaskAck, stream_subject: str) -> None:
        """Acknowledge `msg`: held back when the first chunk can answer for it, else now."""
        if self.grace_s <= 0 or msg.reply != stream_subject or request_id in self._held:
            await self._send(msg, ack)
            return
        loop = asyncio.get_running_loop()
        self._held[request_id] = loop.call_later(self.grace_s, self._grace_over, request_id, msg, ack)

    def answered(self, request_id: str) -> None:
        """A chunk of the request is about to be published: it answers for the held ack."""
        held = self._held.pop(request_id, None) if self._held else None
        if held is not None:
            held.cancel()

    def _grace_over(self, request_id: str, msg: Msg, ack: TaskAck) -> None:
        if self._held.pop(request_id, None) is not None:
            self._spawn(self._send(msg, ack), name=f"ack-{request_id}")

    def close(self) -> None:
        for held in self._held.values():
            held.cancel()
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)
