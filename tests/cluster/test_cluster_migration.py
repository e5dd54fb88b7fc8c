"""Migration and transfer-failure recovery with real parts: a real nats-server, real UCX, real
engines. A worker "crash" is what peers see of a kill -9 (see cluster_harness.crash); the
chaos test (tests/chaos) does it to real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster_harness import HEARTBEAT_S, Cluster, NatsServer, crash, start_cluster
from nats.aio.msg import Msg
from pdserve import SamplingParams
from pdserve.engine.llm_engine import LLMEngine
from pdserve.errors import KvTransferError
from pdserve.protocol import TokenChunk
from pdserve.services.bus import BusOptions
from pdserve.services.decode import DecodeWorker
from pdserve.services.prefill import PrefillWorker
from pdserve.services.worker_base import WorkerBase
from pdserve.serving.backend import GenerateRequest

PROMPT = list(range(5, 70))
GREEDY = SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True)


def reference(model: Path | None, prompt: list[int], params: SamplingParams) -> list[int]:
    engine = LLMEngine.from_model(model, dtype="float32")
    engine.add_request("ref", prompt, params)
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                return out.token_ids
    raise AssertionError("reference never finished")


def request(rid: str, params: SamplingParams = GREEDY, timeout: float = 60.0) -> GenerateRequest:
    return GenerateRequest(rid, PROMPT, params, time.time() + timeout)


async def collect(chunks: AsyncIterator[TokenChunk]) -> tuple[list[int], list[TokenChunk]]:
    tokens: list[int] = []
    seen: list[TokenChunk] = []
    async for chunk in chunks:
        assert chunk.index == len(tokens), "a token was duplicated or dropped"
        tokens.extend(chunk.token_ids)
        seen.append(chunk)
    return tokens, seen


@pytest.fixture
async def nats_url() -> AsyncIterator[str]:
    server = NatsServer()
    server.start()
    yield server.url
    server.stop()


async def survivors_idle(cluster: Cluster, dead: set[str]) -> None:
    alive = [w for w in cluster.workers if w.worker_id not in dead]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(not w.busy() and w.engine.kv_blocks_used == 0 for w in alive):
            break
        await asyncio.sleep(0.05)
    for w in alive:
        assert w.engine.kv_blocks_used == 0, f"{w.worker_id} leaked blocks"
        w.engine.check_integrity()


async def test_decode_worker_dies_mid_stream(nats_url: str) -> None:
    expected = reference(None, PROMPT, GREEDY)
    cluster = await start_cluster(nats_url, prefill=1, decode=2)
    try:
        assert cluster.backend is not None
        tokens: list[int] = []
        victim = ""
        async for chunk in cluster.backend.generate(request("mig-decode")):
            assert chunk.index == len(tokens) and not chunk.error, chunk
            tokens.extend(chunk.token_ids)
            if not victim and len(tokens) >= 10 and chunk.worker_id.startswith("decode"):
                victim = chunk.worker_id
                await crash(next(w for w in cluster.workers if w.worker_id == victim))
        assert victim, "the stream never reached a decode worker"
        assert tokens == expected
        assert cluster.backend.migrations == 1
        await survivors_idle(cluster, {victim})
    finally:
        await cluster.stop()


async def add_worker(cluster: Cluster, cls: type[WorkerBase], worker_id: str, **kwargs: object) -> WorkerBase:
    engine = LLMEngine.from_model(None, dtype="float32")
    bus = BusOptions(url=cluster.nats_url, cluster=cluster.cluster)
    worker = cls(engine, bus, worker_id=worker_id, model_name="test", heartbeat_s=HEARTBEAT_S, **kwargs)
    cluster.workers.append(worker)
    await worker.start()
    await cluster.wait_ready()
    return worker


class PrefillThatDies(PrefillWorker):
    """Acknowledges its first task and dies before computing it."""

    died = asyncio.Event()

    async def _on_task(self, msg: Msg) -> None:
        await super()._on_task(msg)
        self.died.set()
        # Not awaited here: closing the connection cancels this very callback.
        asyncio.get_running_loop().create_task(crash(self))


async def test_prefill_worker_dies_after_accepting(nats_url: str) -> None:
    expected = reference(None, PROMPT, GREEDY)
    cluster = await start_cluster(nats_url, prefill=0, decode=1)
    try:
        assert cluster.backend is not None
        # Acks at once, so the router has its ack before the crash (with the ack grace, a death
        # before the first chunk is an unanswered task, which the router retries elsewhere).
        dying = await add_worker(cluster, PrefillThatDies, "prefill-dying", ack_grace_s=0)
        assert isinstance(dying, PrefillThatDies)
        served = asyncio.create_task(collect(cluster.backend.generate(request("mig-prefill"))))
        await asyncio.wait_for(dying.died.wait(), 10)
        cluster.workers.remove(dying)
        await add_worker(cluster, PrefillWorker, "prefill-healthy")
        tokens, chunks = await served
        assert tokens == expected
        assert chunks[-1].finish_reason == "length"
        assert cluster.backend.migrations == 1
        await survivors_idle(cluster, set())
    finally:
        await cluster.stop()


class PrefillThatLosesKv(PrefillWorker):
    """Hands off as usual, but its KV push fails: the decode worker's ticket runs out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.sender.push = self._push_never_lands  # type: ignore[method-assign]

    async def _push_never_lands(self, *args: object, **kwargs: object) -> None:
        raise KvTransferError("push sabotaged by the test")


@pytest.mark.parametrize("policy", ["recompute", "fail"])
async def test_kv_transfer_failure_policy(nats_url: str, policy: str) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=11, ignore_eos=True)
    expected = reference(None, PROMPT, params)
    cluster = await start_cluster(nats_url, prefill=0, decode=0)
    try:
        assert cluster.backend is not None
        await add_worker(cluster, PrefillThatLosesKv, "prefill-0")
        decode = await add_worker(cluster, DecodeWorker, "decode-0", lease_s=1.0, transfer_failure_policy=policy)
        cluster.backend.policy.max_migrations = 0  # this checks the decode worker's own recovery
        tokens, chunks = await collect(cluster.backend.generate(request("kv-lost", params)))
        if policy == "recompute":
            assert tokens == expected
            assert decode.counters["recomputed"] == 1
        else:
            assert chunks[-1].error_code == 502 and "KV transfer failed" in chunks[-1].error
            assert tokens == expected[:1]  # the first token was streamed before the push
        await survivors_idle(cluster, set())
    finally:
        await cluster.stop()


async def test_worker_ends_a_request_past_its_deadline_without_the_router(nats_url: str) -> None:
    """No cancel ever comes (the router is gone): the worker's own deadline sweep ends the
    request with a 504 chunk and frees its blocks."""
    from pdserve.protocol import GenerateTask, TaskAck, decode, encode, params_to_wire

    cluster = await start_cluster(nats_url, prefill=0, decode=0, colocated=1)
    try:
        assert cluster.router_nc is not None
        worker = cluster.workers[0]
        subjects = worker.subjects
        chunks: asyncio.Queue[TokenChunk] = asyncio.Queue()

        async def on_chunk(msg: Msg) -> None:
            chunks.put_nowait(decode(msg.data, TokenChunk))

        stream = subjects.stream("gone-router", "orphan")
        await cluster.router_nc.subscribe(stream, cb=on_chunk)
        params = SamplingParams(max_tokens=1900, temperature=0.0, ignore_eos=True)
        task = GenerateTask("orphan", PROMPT, params_to_wire(params), stream, deadline=time.time() + 1.0)
        reply = await cluster.router_nc.request(subjects.task(worker.worker_id), encode(task), timeout=5)
        assert decode(reply.data, TaskAck).accepted
        last = await asyncio.wait_for(_until_finished(chunks), 20)
        assert last.error_code == 504 and "deadline" in last.error
        await survivors_idle(cluster, set())
    finally:
        await cluster.stop()


async def _until_finished(chunks: asyncio.Queue[TokenChunk]) -> TokenChunk:
    while True:
        chunk = await chunks.get()
        if chunk.finish_reason is not None:
            return chunk
