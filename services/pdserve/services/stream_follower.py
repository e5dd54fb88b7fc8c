"""Following one attempt at a request: chunks in output order, and noticing when it is lost.

An attempt is one dispatch of a request to a worker (or a prefill/decode pair). Its chunks are
yielded by output index: duplicates dropped, early arrivals held until the gap fills (the
first token comes from the prefill worker and the rest from the decode worker, and the broker
orders messages per publisher only). The attempt is *lost*, and the router may migrate the
request, when the worker holding it goes silent, when a gap in the indices outlives
`gap_timeout_s` (a chunk dropped while the broker restarted), or when a started stream makes
no progress for `stall_timeout_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pdserve.protocol import TaskAck, TokenChunk
from pdserve.protocol.stream import StreamMessage
from pdserve.services.cluster_view import ClusterView
from pdserve.serving.chunks import error_chunk


@dataclass(slots=True)
class MigrationPolicy:
    """When the router gives up on an attempt and re-serves the request elsewhere (seconds)."""

    max_migrations: int = 3  # per request; 0 turns migration off (a lost attempt fails with 503)
    stall_timeout_s: float = 10.0  # no new token after the first one
    gap_timeout_s: float = 2.0  # a missing index while later chunks wait
    poll_s: float = 0.2  # how often liveness is checked while waiting
    # A migrating request waits this long for a live worker to appear (a restarted one)
    # before it fails; a fresh request is refused at once instead (backpressure).
    wait_for_workers_s: float = 10.0


class AttemptFollower:
    """Yields an attempt's chunks in order; afterwards `outcome` says how it ended:
    "finished" (a finishing chunk), "error" (an error chunk, yielded), "deadline" (a 504 chunk,
    yielded) or "lost" (nothing more will come; `lost_reason` says why, nothing yielded)."""

    def __init__(
        self,
        queue: asyncio.Queue[StreamMessage],
        view: ClusterView,
        holder: str,
        next_index: int,
        deadline: float,
        policy: MigrationPolicy,
    ) -> None:
        self.queue = queue
        self.view = view
        self.holder = holder  # the worker expected to produce the next token
        self.start_index = self.next_index = next_index
        self.deadline = deadline
        self.policy = policy
        self.outcome = ""
        self.lost_reason = ""
        self._held: dict[int, TokenChunk] = {}
        self._progress_at = time.monotonic()
        self._gap_since: float | None = None

    async def chunks(self) -> AsyncIterator[TokenChunk]:
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                self.outcome = "deadline"
                yield error_chunk("", "router", "request deadline passed", 504, self.next_index)
                return
            try:
                # A timer per wait: skipped while chunks are already waiting (under load). Not
                # wait_for, which on Python 3.11 can swallow a cancel (the client went away) that
                # lands as a chunk arrives, so the request would run on to its end.
                if self.queue.empty():
                    async with asyncio.timeout(min(self.policy.poll_s, remaining)):
                        chunk = await self.queue.get()
                else:
                    chunk = self.queue.get_nowait()
            except TimeoutError:
                reason = self._why_lost()
                if reason:
                    self.outcome, self.lost_reason = "lost", reason
                    return
                continue
            if isinstance(chunk, TaskAck):
                continue  # a late ack from a worker we gave up on (ack timeout) and moved past
            if chunk.error:
                self.outcome = "error"
                yield chunk
                return
            handoff = chunk.extra.get("decode_worker")
            self.holder = handoff if isinstance(handoff, str) and handoff else chunk.worker_id
            if chunk.index + len(chunk.token_ids) <= self.next_index and chunk.finish_reason is None:
                continue  # already delivered (a recomputing decode worker repeats the first token)
            self._held[chunk.index] = chunk
            while self.next_index in self._held:
                ready = self._held.pop(self.next_index)
                self.next_index += len(ready.token_ids)
                self._progress_at = time.monotonic()
                if ready.finish_reason is not None:
                    # Set before the yield: a consumer may stop at the finishing chunk and never
                    # resume us, and an unfinished outcome would send the workers a cancel.
                    self.outcome = "finished"
                    yield ready
                    return
                yield ready
            self._gap_since = (self._gap_since or time.monotonic()) if self._held else None

    def _why_lost(self) -> str:
        now = time.monotonic()
        if not self.view.is_alive(self.holder):
            return f"worker {self.holder} went silent"
        if self.view.blind:
            return ""  # our own broker link is down or just back: give the stream time
        if self._gap_since is not None and now - self._gap_since > self.policy.gap_timeout_s:
            return f"tokens from index {self.next_index} never arrived"
        started = self.next_index > self.start_index
        if started and now - self._progress_at > self.policy.stall_timeout_s:
            return f"no tokens for {self.policy.stall_timeout_s:g} s"
        return ""
