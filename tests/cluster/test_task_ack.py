"""A task's ack, on the wire: folded into the first chunk when that comes within the grace,
sent when it does not, sent at once to a router that waits on an inbox of its own; and a late
answer from a worker the router gave up on never passes for the next worker's."""

from __future__ import annotations

import asyncio
import time

from cluster_harness import NatsServer, start_cluster
from nats.aio.msg import Msg
from pdserve import SamplingParams
from pdserve.protocol import GenerateTask, TaskAck, TokenChunk, decode, encode
from pdserve.protocol.stream import StreamMessage, decode_stream_message
from pdserve.services.bus import flush
from pdserve.services.cluster_backend import answer_from
from pdserve.serving.backend import GenerateRequest

GREEDY_4 = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


async def _on_the_wire(cluster, request: GenerateRequest) -> list[StreamMessage]:  # type: ignore[no-untyped-def]
    """Serve `request` through the router, returning every message its stream subject carried."""
    backend, nc = cluster.backend, cluster.router_nc
    seen: list[StreamMessage] = []

    async def record(msg: Msg) -> None:
        seen.append(decode_stream_message(msg.data))

    sub = await nc.subscribe(backend.subjects.stream(backend.router_id, request.request_id), cb=record)
    await flush(nc)
    chunks = [c async for c in backend.generate(request)]
    assert chunks[-1].finish_reason == "length"
    assert sum(len(c.token_ids) for c in chunks) == request.params.max_tokens
    await asyncio.sleep(0.2)  # anything still in flight (a stray ack) lands
    await sub.unsubscribe()
    return seen


async def test_the_first_chunk_answers_for_the_ack_and_a_slow_one_does_not(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=1)
    try:
        (worker,) = cluster.workers
        assert worker.acks.grace_s > 0

        # A short request: its first chunk comes within the grace, and no ack is sent at all.
        seen = await _on_the_wire(cluster, GenerateRequest("quick", [5, 6, 7], GREEDY_4, time.time() + 30))
        assert not any(isinstance(m, TaskAck) for m in seen), seen
        assert isinstance(seen[0], TokenChunk) and seen[0].worker_id == worker.worker_id

        # The engine is held up past the grace: the ack goes out first, then the tokens.
        worker.acks.grace_s = 0.05
        busy = worker.loop.submit(lambda: time.sleep(0.5))
        seen = await _on_the_wire(cluster, GenerateRequest("slow", [5, 6, 7], GREEDY_4, time.time() + 30))
        await busy
        assert isinstance(seen[0], TaskAck) and seen[0].accepted and seen[0].worker_id == worker.worker_id
        assert [type(m) for m in seen[1:]] == [TokenChunk] * (len(seen) - 1)

        # Grace 0: acked at once, as before the grace existed.
        worker.acks.grace_s = 0
        seen = await _on_the_wire(cluster, GenerateRequest("at-once", [5, 6, 7], GREEDY_4, time.time() + 30))
        assert isinstance(seen[0], TaskAck) and seen[0].accepted
        assert len(worker.acks) == 0
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_a_router_waiting_on_its_own_inbox_is_acked_at_once(nats_server: NatsServer) -> None:
    """A task whose reply subject is not its stream subject: tokens on the stream subject would
    not reach the inbox, so the ack is not held back, however long the grace."""
    cluster = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=1)
    try:
        (worker,) = cluster.workers
        worker.acks.grace_s = 30.0
        nc, subjects = cluster.router_nc, cluster.backend.subjects  # type: ignore[union-attr]
        assert nc is not None
        task = GenerateTask("inbox", [5, 6, 7], {"max_tokens": 2, "temperature": 0.0}, "elsewhere", time.time() + 30)
        started = time.monotonic()
        reply = await nc.request(subjects.task(worker.worker_id), encode(task), timeout=5)
        assert decode(reply.data, TaskAck).accepted
        assert time.monotonic() - started < 2.0
        await cluster.wait_idle()
        assert len(worker.acks) == 0
    finally:
        await cluster.stop()


async def test_late_tokens_from_a_worker_given_up_on_are_not_the_answer() -> None:
    """Worker A did not answer in time and the task went to B: A's first token, arriving late,
    must not pass for B's answer (B's own token does)."""
    queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
    queue.put_nowait(TokenChunk("r", 0, [9], worker_id="worker-a"))
    queue.put_nowait(TokenChunk("r", 0, [7], worker_id="worker-b"))
    answer = await answer_from(queue, "worker-b", {"worker-a"})
    assert isinstance(answer, TokenChunk) and answer.worker_id == "worker-b"
    # Without anyone given up, a token answers whoever sent it (a prefill worker's first token).
    queue.put_nowait(TokenChunk("r", 0, [9], worker_id="prefill-0"))
    assert (await answer_from(queue, "prefill-0")).token_ids == [9]  # type: ignore[union-attr]
