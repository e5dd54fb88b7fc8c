"""`stop_reason` (vLLM's) on every choice: the stop string or stop token id that ended it, null
otherwise; in a stream, on the finishing chunk. Equal to the offline engine's."""

from __future__ import annotations

import httpx
from pdserve import LLM, SamplingParams
from router_helpers import MODEL, sse_data

BODY = {"model": MODEL, "prompt": "Hello", "max_tokens": 24, "temperature": 0, "ignore_eos": True}


async def test_stop_reason_over_http(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    plain = (await client.post("/v1/completions", json=BODY)).json()["choices"][0]
    assert plain["finish_reason"] == "length" and "stop_reason" in plain and plain["stop_reason"] is None
    stop = plain["text"][4:7]
    by_string = (await client.post("/v1/completions", json={**BODY, "stop": [stop]})).json()["choices"][0]
    offline = reference_llm.generate(
        "Hello", SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    )
    assert by_string["finish_reason"] == "stop" and by_string["stop_reason"] == stop == offline[0].stop_reason
    token = reference_llm.generate("Hello", SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))[
        0
    ].token_ids[5]
    body = {**BODY, "stop_token_ids": [token], "stream": True}
    events = [e for e in sse_data((await client.post("/v1/completions", json=body)).text) if e != "[DONE]"]
    finishing = [c for e in events for c in e["choices"] if c["finish_reason"] is not None]
    assert len(finishing) == 1 and finishing[0]["stop_reason"] == token
    assert all("stop_reason" not in c for e in events for c in e["choices"] if c["finish_reason"] is None)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}
    reply = (await client.post("/v1/chat/completions", json={**chat, "ignore_eos": True})).json()["choices"][0]
    assert reply["stop_reason"] is None
    stop = reply["message"]["content"][2:4]
    reply = (await client.post("/v1/chat/completions", json={**chat, "ignore_eos": True, "stop": stop})).json()
    assert reply["choices"][0]["stop_reason"] == stop
    streamed = await client.post(
        "/v1/chat/completions", json={**chat, "ignore_eos": True, "stop": stop, "stream": True}
    )
    finishing = [c for e in sse_data(streamed.text) if e != "[DONE]" for c in e["choices"] if c["finish_reason"]]
    assert [c["stop_reason"] for c in finishing] == [stop]
