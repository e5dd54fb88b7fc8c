"""send_now: a publish leaves for the broker at once, in order, and never breaks a closed client."""

from __future__ import annotations

import asyncio

from cluster_harness import NatsServer
from nats.aio.msg import Msg
from pdserve.services.bus import BusOptions, connect, flush, send_now


async def test_nats_py_still_has_what_send_now_relies_on(nats_server: NatsServer) -> None:
    """Without these private attributes send_now quietly does nothing; this test notices first."""
    nc = await connect(BusOptions(url=nats_server.url), name="t")
    try:
        assert isinstance(nc._pending, list)
        assert isinstance(nc._pending_data_size, int)
        assert hasattr(nc._transport, "writelines")
    finally:
        await nc.close()


async def test_published_bytes_are_written_at_once_and_arrive_in_order(nats_server: NatsServer) -> None:
    pub = await connect(BusOptions(url=nats_server.url), name="pub")
    sub = await connect(BusOptions(url=nats_server.url), name="sub")
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg.data)
        if len(got) == 3:
            arrived.set()

    try:
        await sub.subscribe("t.send-now", cb=on_msg)
        await flush(sub)  # the SUB is registered before pub publishes (bus.flush says why not sub.flush())
        for i in range(3):
            await pub.publish("t.send-now", str(i).encode())
        assert pub._pending  # nats-py left them for its flusher task
        send_now(pub)
        assert pub._pending == [] and pub._pending_data_size == 0  # handed to the socket, in this turn
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [b"0", b"1", b"2"]
        send_now(pub)  # nothing pending: nothing to do
    finally:
        await pub.close()
        await sub.close()


async def test_a_closed_client_is_left_alone(nats_server: NatsServer) -> None:
    nc = await connect(BusOptions(url=nats_server.url), name="t")
    await nc.close()
    send_now(nc)  # no error, nothing written
