"""bad_words hold across the prefill-to-decode hand-off: a 1P:1D cluster gives the offline
engine's tokens, so both workers ban the same words. Real nats-server, UCX and engines."""

from __future__ import annotations

import time

from cluster_harness import NatsServer, start_cluster
from pdserve import LLM, SamplingParams
from pdserve.serving.backend import GenerateRequest

LETTERS = list(range(ord("a"), ord("z") + 1))
PROMPT = list(b"the cat sat. ")


def params(bad_words: list[str] | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, allowed_token_ids=LETTERS, bad_words=bad_words
    )


async def test_disaggregated_output_matches_offline(nats_server: NatsServer) -> None:
    llm = LLM(dtype="float32", num_kv_blocks=64)
    plain = llm.generate([PROMPT], params(None))[0].token_ids
    words = [bytes(plain[1:3]).decode(), bytes(plain[6:7]).decode()]  # a two-letter word, and a letter
    expected = llm.generate([PROMPT], params(words))[0].token_ids
    assert expected != plain
    cluster = await start_cluster(nats_server.url, prefill=1, decode=1)
    try:
        assert cluster.backend is not None
        request = GenerateRequest("bad-words", PROMPT, params(words), time.time() + 60)
        chunks = [c async for c in cluster.backend.generate(request)]
        assert chunks[-1].finish_reason == "length", chunks[-1]
        assert [t for c in chunks for t in c.token_ids] == expected
        await cluster.wait_idle()
    finally:
        await cluster.stop()
