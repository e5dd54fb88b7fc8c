"""Garbage on every subject crashes nothing; requests still work afterwards."""

from __future__ import annotations

import asyncio
import random
import time

import msgpack
from cluster_harness import NatsServer, crash, start_cluster
from pdserve import SamplingParams
from pdserve.protocol import GenerateTask, KvAdmission, KvOffer, TaskAck, decode, encode
from pdserve.protocol.stream import StreamMessage
from pdserve.services.bus import flush
from pdserve.services.cluster_backend import answer_from
from pdserve.serving.backend import GenerateRequest


def garbage(rng: random.Random) -> list[bytes]:
    valid = encode(GenerateTask("x", [1, 2, 3], {"max_tokens": 4}, "s", time.time() + 10))
    samples = [
        b"",
        b"\xc1",
        valid[: len(valid) // 2],
        msgpack.packb({"v": 99, "type": "GenerateTask"}),
        msgpack.packb({"v": 1, "type": "KvOffer"}),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 1, "type": "GenerateTask", "request_id": 5, "prompt_token_ids": "no"}),
        encode(GenerateTask("bad-params", [1, 2], {"max_tokens": -1}, "s", time.time() + 10)),
        encode(GenerateTask("huge-token", [10**9], {"max_tokens": 2}, "s", time.time() + 10)),
    ]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    return samples


async def test_malformed_messages_are_refused_not_fatal(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, prefill=1, decode=1, colocated=1)
    try:
        nc = cluster.router_nc
        assert nc is not None
        subjects = cluster.backend.subjects  # type: ignore[union-attr]
        rng = random.Random(7)
        for payload in garbage(rng):
            for worker in ("prefill-0", "worker-0"):
                reply = await nc.request(subjects.task(worker), payload, timeout=2)
                ack = decode(reply.data, TaskAck)
                assert not ack.accepted and ack.code == 400, ack
            reply = await nc.request(subjects.kv_offer("decode-0"), payload, timeout=2)
            assert not decode(reply.data, KvAdmission).accepted
            stream = subjects.stream(cluster.backend.router_id, "x")  # type: ignore[union-attr]
            for subject in (subjects.heartbeat, subjects.router_heartbeat, subjects.cancel, stream):
                await nc.publish(subject, payload)
        # A well-formed offer with a layout from another model is refused with the reason.
        layout = {
            "model_fingerprint": "other",
            "dtype": "float32",
            "num_layers": 4,
            "num_kv_heads": 2,
            "head_dim": 16,
            "block_size": 16,
        }
        offer = KvOffer("o", [1, 2, 3], 4, {"max_tokens": 4}, layout, 3 * 256, "s", time.time() + 5)
        reply = await nc.request(subjects.kv_offer("decode-0"), encode(offer), timeout=2)
        admission = decode(reply.data, KvAdmission)
        assert not admission.accepted and "model_fingerprint" in admission.reason
        await flush(nc)
        assert all(w.counters["malformed"] > 0 for w in cluster.workers)
        assert all(w.routers is not None and w.routers.rejected > 0 for w in cluster.workers)
        request = GenerateRequest("after", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0), time.time() + 30)
        chunks = [c async for c in cluster.backend.generate(request)]  # type: ignore[union-attr]
        assert chunks[-1].finish_reason == "length"
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_a_task_nobody_takes_moves_on_at_once(nats_server: NatsServer) -> None:
    """A worker that died a moment ago still looks alive (its beats are not stale yet); the broker
    answers a task sent to it with "no responders", and the router tries the next worker at once
    rather than after the 2 s ack timeout."""
    cluster = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=2)
    try:
        dead, alive = cluster.workers
        backend = cluster.backend
        assert backend is not None
        await crash(dead)
        assert dead.worker_id in {b.worker_id for b in backend.view.live()}
        backend.view.assigned[alive.worker_id] = 100  # the dead one is the first choice
        started = time.monotonic()
        request = GenerateRequest("r", [5, 6, 7], SamplingParams(max_tokens=3, temperature=0.0), time.time() + 30)
        chunks = [c async for c in backend.generate(request)]
        assert chunks[-1].finish_reason == "length"
        assert time.monotonic() - started < 1.0
        assert alive.counters["accepted"] == 1
    finally:
        await cluster.stop()


async def test_garbage_and_stray_acks_on_a_live_stream_change_nothing(nats_server: NatsServer) -> None:
    """The stream subject carries the ack then the tokens; junk or a second ack arriving there
    mid-stream is dropped (or skipped) and the request ends with exactly its tokens."""
    cluster = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=1)
    try:
        backend, nc = cluster.backend, cluster.router_nc
        assert backend is not None and nc is not None
        params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
        request = GenerateRequest("r-junk", [5, 6, 7], params, time.time() + 30)
        subject = backend.subjects.stream(backend.router_id, "r-junk")
        tokens: list[int] = []
        async for chunk in backend.generate(request):
            if not tokens:
                for payload in (b"\xc1", encode(TaskAck(accepted=False, reason="late", code=503)), b""):
                    await nc.publish(subject, payload)
            tokens += chunk.token_ids
        assert len(tokens) == 40
        assert backend.malformed >= 2
    finally:
        await cluster.stop()


async def test_a_late_ack_from_a_worker_given_up_on_is_not_the_answer() -> None:
    """Worker A timed out, the task went to B; A's late ack must not pass for B's answer."""
    queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
    queue.put_nowait(TaskAck(accepted=True, worker_id="worker-a"))
    queue.put_nowait(TaskAck(accepted=False, reason="queue full", code=429, worker_id="worker-b"))
    answer = await answer_from(queue, "worker-b")
    assert isinstance(answer, TaskAck) and answer.worker_id == "worker-b" and answer.code == 429
    queue.put_nowait(TaskAck(accepted=True))  # an older worker names nobody: taken as before
    assert await answer_from(queue, "worker-c") == TaskAck(accepted=True)
