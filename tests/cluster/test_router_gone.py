"""A router that dies sends no cancel: its workers notice its heartbeats stop and end its requests
(router_watch.py), instead of generating them to their deadlines for nobody. Real nats-server,
real engines; a router "dies" the way a kill -9 looks to its peers (beats stop, connection drops,
no goodbye)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from cluster_harness import NatsServer, start_cluster
from nats.aio.client import Client
from pdserve.protocol import RouterHeartbeat, Subjects, TokenChunk, decode, encode
from pdserve.sampling_params import SamplingParams
from pdserve.services.bus import BusOptions, connect
from pdserve.services.cluster_backend import ClusterBackend
from pdserve.services.router_watch import RouterWatch
from pdserve.serving.backend import GenerateRequest

PROMPT = [5, 6, 7, 8]


def long_request(rid: str, max_tokens: int = 2000) -> GenerateRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return GenerateRequest(rid, PROMPT, params, time.time() + 120)


async def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_judging_routers_by_their_silence(nats_server: NatsServer) -> None:
    nc = await connect(BusOptions(url=nats_server.url, cluster="judge"), name="judge")
    try:
        watch = RouterWatch(nc, Subjects("judge"), silence_s=2.0)
        assert not watch.gone("never-heard", now=1e9)  # an older router without beats is never held to them
        watch.heard("r1", interval_s=1.0, now=100.0)
        assert not watch.gone("r1", now=102.5)  # past silence_s, but three of its own beats are 3 s
        assert watch.gone("r1", now=103.1)
        watch.heard("r1", interval_s=1.0, now=103.2)  # back: not gone any more
        assert not watch.gone("r1", now=104.0)
        watch.heard("r2", interval_s=0.1, now=100.0)
        assert not watch.gone("r2", now=101.9) and watch.gone("r2", now=102.1)  # short beats: silence_s rules
        watch.blindness.until = 1e9  # our own link just came back: silence says nothing yet
        assert not watch.gone("r2", now=200.0)
        with pytest.raises(ValueError, match="silence_s must be positive"):
            RouterWatch(nc, Subjects("judge"), silence_s=0)
    finally:
        await nc.close()
    assert not watch.gone("r2", now=1e9 + 1)  # nothing is judged without a connection


@pytest.mark.parametrize("topology", [(0, 0, 1), (1, 1, 0)], ids=["colocated", "disaggregated"])
async def test_a_dead_routers_request_ends_and_a_live_routers_does_not(
    nats_server: NatsServer, topology: tuple[int, int, int]
) -> None:
    prefill, decode_workers, colocated = topology
    cluster = await start_cluster(nats_server.url, prefill=prefill, decode=decode_workers, colocated=colocated)
    dying_nc: Client | None = None
    try:
        # The one that streams the tokens (colocated, or decode) is the one holding the request.
        worker = cluster.workers[-1]
        for each in cluster.workers:
            assert each.routers is not None
            each.routers.silence_s = 1.0  # the default is 10 s

        def ended() -> int:
            return sum(w.counters["router_gone"] for w in cluster.workers)

        bus = BusOptions(url=nats_server.url, cluster=cluster.cluster)
        dying_nc = await connect(bus, name="dying-router")
        dying = ClusterBackend(dying_nc, Subjects(cluster.cluster), router_id="dying", heartbeat_s=0.2)
        await dying.start()
        await wait_for(lambda: dying.ready(), 10, "the workers to show up")
        await wait_for(lambda: worker.routers is not None and "dying" in worker.routers._heard, 5, "the router's beat")

        orphan = dying.generate(long_request(f"orphan-{uuid.uuid4().hex[:6]}"))
        first = await anext(orphan)
        assert not first.error and first.token_ids
        # The live router's request streams through the whole silence window and beyond.
        assert cluster.backend is not None
        live_tokens: list[int] = []

        async def live() -> TokenChunk:
            async for chunk in cluster.backend.generate(long_request("live", max_tokens=400)):  # type: ignore[union-attr]
                live_tokens.extend(chunk.token_ids)
                if chunk.finish_reason is not None:
                    return chunk
            raise AssertionError("the live stream ended without a finish")

        live_task = asyncio.create_task(live())
        # The crash: heartbeats stop and the connection drops, with no cancel and no goodbye.
        assert dying._heartbeat is not None
        dying._heartbeat.cancel()
        await dying_nc.close()
        crashed_at = time.monotonic()
        await wait_for(lambda: ended() >= 1, 10, "the workers to end the orphan")
        noticed_after = time.monotonic() - crashed_at
        assert 0.9 < noticed_after < 5.0, noticed_after
        await wait_for(
            lambda: not any(r.startswith("orphan") for w in cluster.workers for r in w.engine.requests), 5, "the abort"
        )
        last = await asyncio.wait_for(live_task, 60)
        assert last.finish_reason == "length" and len(live_tokens) == 400
        assert worker.counters["router_gone"] == 1 and ended() == 1
        await cluster.wait_idle()  # every KV block back
        with contextlib.suppress(Exception):
            await orphan.aclose()
    finally:
        await cluster.stop()
        if dying_nc is not None and not dying_nc.is_closed:
            await dying_nc.close()


async def test_routers_publish_heartbeats(nats_server: NatsServer) -> None:
    bus = BusOptions(url=nats_server.url, cluster="beats")
    nc = await connect(bus, name="listener")
    router_nc = await connect(bus, name="router")
    beats: list[RouterHeartbeat] = []

    async def on_beat(msg: object) -> None:
        beats.append(decode(msg.data, RouterHeartbeat))  # type: ignore[attr-defined]

    try:
        await nc.subscribe(Subjects("beats").router_heartbeat, cb=on_beat)
        await nc.flush()
        backend = ClusterBackend(router_nc, Subjects("beats"), router_id="r-beats", heartbeat_s=0.1)
        await backend.start()
        await wait_for(lambda: len(beats) >= 3, 5, "three beats")
        await backend.close()
        count = len(beats)
        await asyncio.sleep(0.4)
        assert len(beats) <= count + 1  # closing stops them
        assert {b.router_id for b in beats} == {"r-beats"} and all(b.interval_s == 0.1 for b in beats)
        with pytest.raises(ValueError, match="heartbeat_s must be positive"):
            ClusterBackend(router_nc, Subjects("beats"), heartbeat_s=0)
    finally:
        await nc.close()
        await router_nc.close()
    assert Subjects("c").router_of_stream(Subjects("c").stream("router-1", "req-9")) == "router-1"
    assert Subjects("c").router_of_stream("other.stream.router-1.req") is None
    assert Subjects("c").router_of_stream("c.task.worker-1") is None
    with pytest.raises(Exception, match="interval_s"):
        decode(encode(RouterHeartbeat("r", 0.0, interval_s=-1.0)), RouterHeartbeat)
