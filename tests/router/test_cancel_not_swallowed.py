"""A cancel (the client went away) that lands in the same loop iteration as a chunk must still
cancel the reader: with `asyncio.wait_for` on Python 3.11 the chunk won and the request ran on
to its end, holding its KV (seen as a flaky disconnect test once requests with one choice were
read without a pump task)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pdserve.protocol import Subjects, TokenChunk
from pdserve.services.cluster_view import ClusterView
from pdserve.services.stream_follower import AttemptFollower, MigrationPolicy


async def test_follower_cancel_landing_with_a_chunk_cancels() -> None:
    queue: asyncio.Queue[TokenChunk] = asyncio.Queue()
    view = ClusterView(None, Subjects("t"))  # type: ignore[arg-type]  # never consulted: no timeout here
    follower = AttemptFollower(queue, view, "w1", 0, time.time() + 60, MigrationPolicy(poll_s=30))
    reader = asyncio.create_task(anext(follower.chunks()))
    for _ in range(5):
        await asyncio.sleep(0)  # the reader is now waiting on the empty queue
    assert not reader.done()
    queue.put_nowait(TokenChunk("r", 0, [7], "w1"))
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
