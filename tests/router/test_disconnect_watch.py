"""DisconnectWatch: one watcher per request cancels the work in the request's own task."""

from __future__ import annotations

import asyncio

import pytest
from pdserve.services.router.disconnect import ClientDisconnected, DisconnectWatch


class Connection:
    """An ASGI receive() whose client leaves when told to."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, object]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_work_finishing_first_returns_its_result() -> None:
    conn = Connection()
    watch = DisconnectWatch(conn.receive)
    assert await watch.guard(asyncio.sleep(0.01, result=42)) == 42
    assert await watch.guard(asyncio.sleep(0, result="again")) == "again"  # one watcher, many phases
    watch.close()


async def test_client_leaving_cancels_the_work_and_raises() -> None:
    conn = Connection()
    watch = DisconnectWatch(conn.receive)
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.02, conn.gone.set)
    with pytest.raises(ClientDisconnected):
        await watch.guard(work())
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # nothing left pending
    with pytest.raises(ClientDisconnected):  # gone for good: later phases fail at once
        await watch.guard(asyncio.sleep(30))
    watch.close()


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    conn = Connection()
    watch = DisconnectWatch(conn.receive)
    task = asyncio.create_task(watch.guard(asyncio.sleep(30)))
    await asyncio.sleep(0.01)
    task.cancel()  # server shutdown, say: not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watch.disconnected
    watch.close()
