"""Disaggregated and colocated serving over a real nats-server and real UCX transfers."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from cluster_harness import NatsServer, start_cluster
from pdserve import LLM, SamplingParams
from pdserve.protocol import TokenChunk
from pdserve.serving.backend import GenerateRequest

LENGTHS = [3, 200, 17, 64, 130, 7, 255, 41, 90, 5, 33, 160, 12, 75, 240, 50]


def prompts(n: int = 16, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(LENGTHS[i % len(LENGTHS)])] for i in range(n)]


async def collect(backend: object, rid: str, prompt: list[int], params: SamplingParams) -> list[TokenChunk]:
    request = GenerateRequest(rid, prompt, params, time.time() + 60)
    return [chunk async for chunk in backend.generate(request)]  # type: ignore[attr-defined]


def tokens_of(chunks: list[TokenChunk]) -> list[int]:
    assert chunks and chunks[-1].finish_reason in ("stop", "length"), chunks[-1:]
    out: list[int] = []
    for c in chunks:
        assert c.index == len(out), f"chunk index {c.index} after {len(out)} tokens"
        out += c.token_ids
    return out


async def run_all(cluster_backend: object, ps: list[list[int]], params: SamplingParams) -> list[list[int]]:
    results = await asyncio.gather(*[collect(cluster_backend, f"r{i}", p, params) for i, p in enumerate(ps)])
    return [tokens_of(chunks) for chunks in results]


async def test_disaggregated_equals_colocated_equals_offline(nats_server: NatsServer) -> None:
    ps = prompts()
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    expected = [o.token_ids for o in LLM(dtype="float32").generate(ps, params)]

    disagg = await start_cluster(nats_server.url, prefill=1, decode=1)
    try:
        got = await run_all(disagg.backend, ps, params)
        await disagg.wait_idle()
        for w in disagg.workers:
            w.engine.check_integrity()
    finally:
        await disagg.stop()
    assert got == expected

    colo = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=1)
    try:
        assert await run_all(colo.backend, ps, params) == expected
        await colo.wait_idle()
    finally:
        await colo.stop()


async def test_first_token_finishes_without_handoff(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url)
    try:
        chunks = await collect(cluster.backend, "one", [1, 2, 3], SamplingParams(max_tokens=1, temperature=0.0))
        assert tokens_of(chunks) and len(tokens_of(chunks)) == 1
        assert chunks[-1].finish_reason == "length" and chunks[-1].worker_id == "prefill-0"
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_full_decode_worker_refuses_and_another_takes_it(nats_server: NatsServer) -> None:
    # decode-0 has room for 2 blocks only: every 200-token prompt must go to decode-1.
    cluster = await start_cluster(nats_server.url, prefill=1, decode=2, decode_kv_blocks=[2, None])
    try:
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        ps = [list(range(i, i + 200)) for i in range(4)]
        got = await run_all(cluster.backend, ps, params)
        assert all(len(t) == 8 for t in got)
        decode0 = cluster.by_role("decode")[0]
        assert decode0.counters["refused"] >= 1 and decode0.counters["accepted"] == 0
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_no_decode_room_anywhere_is_a_clear_503(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, prefill=1, decode=1, decode_kv_blocks=[2])
    try:
        chunks = await collect(cluster.backend, "big", list(range(200)), SamplingParams(max_tokens=8))
        assert chunks[-1].finish_reason == "error" and chunks[-1].error_code == 503
        assert "no decode worker" in chunks[-1].error
        await cluster.wait_idle()
    finally:
        await cluster.stop()


async def test_cancel_frees_decode_blocks_within_a_second(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url)
    try:
        params = SamplingParams(max_tokens=1500, ignore_eos=True)
        request = GenerateRequest("long", list(range(100)), params, time.time() + 60)
        stream = cluster.backend.generate(request)
        got = 0
        async for chunk in stream:
            got += len(chunk.token_ids)
            if got >= 5:
                break
        decode = cluster.by_role("decode")[0]
        assert decode.engine.kv_blocks_used > 0
        await stream.aclose()
        started = time.monotonic()
        await cluster.wait_idle(timeout=1.0)
        assert time.monotonic() - started < 1.0
    finally:
        await cluster.stop()


async def test_two_by_two_serves_64_concurrent_streams(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, prefill=2, decode=2)
    try:
        ps = prompts(64, seed=3)
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        got = await run_all(cluster.backend, ps, params)
        assert all(len(t) == 12 for t in got)
        for w in cluster.workers:
            assert w.counters["accepted"] > 0, f"{w.worker_id} served nothing"
        await cluster.wait_idle()
        await asyncio.sleep(0.5)  # a heartbeat later, the router's view agrees
        assert all(info.kv_blocks_used == 0 for info in cluster.backend.workers())
    finally:
        await cluster.stop()


@pytest.mark.parametrize("arch", ["gemma", "stablelm"])
async def test_architectures_on_transformers_layers_disaggregate(
    nats_server: NatsServer, model_dirs: dict[str, Path], arch: str
) -> None:
    """The KV hand-off is the same for models on transformers' own layers (Gemma's single KV
    head and explicit head_dim, StableLM's partial rotary): prefill here, decode there, the
    offline engine's tokens."""
    ps = prompts(6, seed=3)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    expected = [o.token_ids for o in LLM(model_dirs[arch], dtype="float32").generate(ps, params)]
    cluster = await start_cluster(nats_server.url, model_dirs[arch], prefill=1, decode=1)
    try:
        assert await run_all(cluster.backend, ps, params) == expected
        await cluster.wait_idle()
        for w in cluster.workers:
            w.engine.check_integrity()
    finally:
        await cluster.stop()
