"""bus.flush: the broker has processed every command given before it, a SUB just made included.

The wire is read by wrapping the client's own transport (every byte still goes to the real
nats-server); the second test checks the consequence across two connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from cluster_harness import NatsServer
from nats.aio.client import Client
from nats.aio.msg import Msg
from pdserve.services.bus import BusOptions, connect, flush


def record_wire(nc: Client) -> list[bytes]:
    """Every command `nc` writes from now on, in order."""
    wire: list[bytes] = []
    transport = nc._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def recorded_write(data: bytes) -> Any:
        wire.append(bytes(data))
        return write(data)

    def recorded_writelines(lines: list[bytes]) -> Any:
        wire.extend(bytes(line) for line in lines)
        return writelines(lines)

    transport.write, transport.writelines = recorded_write, recorded_writelines  # type: ignore[method-assign]
    return wire


@pytest.mark.parametrize("flusher", [flush, lambda nc: nc.flush()], ids=["bus.flush", "nats-py flush"])
async def test_the_ping_follows_the_sub(nats_server: NatsServer, flusher: Callable[[Client], Any]) -> None:
    nc = await connect(BusOptions(url=nats_server.url), name="t")
    try:
        wire = record_wire(nc)
        await nc.subscribe("t.flush-order")
        await flusher(nc)
        await asyncio.sleep(0.05)  # nats-py's flusher task writes what it still holds
        sub_at = next(i for i, line in enumerate(wire) if line.startswith(b"SUB t.flush-order"))
        ping_at = wire.index(b"PING\r\n")
        if flusher is flush:
            assert sub_at < ping_at, wire
        else:  # nats-py 2.16 writes the PING first; when it stops doing so, bus.flush can go
            assert ping_at < sub_at, f"nats-py's flush now keeps the order: {wire}"
    finally:
        await nc.close()


async def test_a_flushed_subscription_hears_another_connection_at_once(nats_server: NatsServer) -> None:
    sub = await connect(BusOptions(url=nats_server.url), name="sub")
    pub = await connect(BusOptions(url=nats_server.url), name="pub")
    try:
        for round_ in range(20):  # the race nats-py's flush leaves open is narrow; each round is a fresh SUB
            got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def heard(msg: Msg, got: asyncio.Future[bytes] = got) -> None:
                if not got.done():
                    got.set_result(msg.data)

            subject = f"t.flush-heard.{round_}"
            subscription = await sub.subscribe(subject, cb=heard)
            await flush(sub)
            await pub.publish(subject, b"x")
            await flush(pub)
            assert await asyncio.wait_for(got, 10) == b"x", round_
            await subscription.unsubscribe()
    finally:
        await pub.close()
        await sub.close()
