"""DeadlineGuard: one timer for all the reads of a stream, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import time

import pytest
from pdserve.services.router.choice_stream import DeadlineGuard


async def test_reads_before_the_deadline_return_their_value() -> None:
    guard = DeadlineGuard(time.time() + 5)
    for i in range(3):
        assert await guard.wait(asyncio.sleep(0, result=i)) == i
    guard.cancel()


async def test_a_read_waiting_at_the_deadline_times_out() -> None:
    guard = DeadlineGuard(time.time() + 0.05)
    assert await guard.wait(asyncio.sleep(0, result="early")) == "early"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await guard.wait(asyncio.sleep(10))
    assert time.monotonic() - started < 1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_read_after_the_deadline_times_out_only_if_it_waits() -> None:
    guard = DeadlineGuard(time.time() + 0.01)
    await asyncio.sleep(0.05)
    assert await guard.wait(asyncio.sleep(0, result="ready")) == "ready"
    with pytest.raises(TimeoutError):
        await guard.wait(asyncio.sleep(10))


async def test_someone_elses_cancel_stays_a_cancel() -> None:
    guard = DeadlineGuard(time.time() + 5)
    reader = asyncio.create_task(guard.wait(asyncio.sleep(10)))
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    guard.cancel()
