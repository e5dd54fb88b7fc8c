"""`bad_words` (vLLM's) over HTTP, both endpoints: the router's answer is the offline engine's,
token for token, and bad lists are a 400 naming the field."""

from __future__ import annotations

import httpx
from pdserve import LLM, SamplingParams
from router_helpers import MODEL, sse_data, streamed_text

LETTERS = list(range(ord("a"), ord("z") + 1))
BODY = {"model": MODEL, "prompt": "the cat sat. ", "max_tokens": 20, "temperature": 0, "ignore_eos": True,
        "allowed_token_ids": LETTERS, "return_token_ids": True}  # fmt: skip


async def test_bad_words_match_the_offline_engine(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    plain = (await client.post("/v1/completions", json=BODY)).json()["choices"][0]["text"]
    word = plain[2:4]
    answer = await client.post("/v1/completions", json={**BODY, "bad_words": [word]})
    assert answer.status_code == 200, answer.text
    text = answer.json()["choices"][0]["text"]
    assert word not in text and text != plain
    params = SamplingParams(
        max_tokens=20, temperature=0.0, ignore_eos=True, allowed_token_ids=LETTERS, bad_words=[word]
    )
    expected = reference_llm.generate("the cat sat. ", params)[0]
    assert answer.json()["choices"][0]["token_ids"] == expected.token_ids
    streamed = await client.post("/v1/completions", json={**BODY, "bad_words": [word], "stream": True})
    assert streamed_text(sse_data(streamed.text)) == text
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "bad_words": [word]}
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200


async def test_bad_lists_are_refused(client: httpx.AsyncClient) -> None:
    for bad in (["   "], [""], "word", ["w"] * 1025, [1]):
        answer = await client.post("/v1/completions", json={**BODY, "bad_words": bad})
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["param"] == "bad_words", answer.json()
        assert "bad_words" in answer.json()["error"]["message"], answer.json()
