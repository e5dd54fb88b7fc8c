"""`prompt_logprobs` (vLLM's) over HTTP: the prompt scored in vLLM's shape, on each completions
choice and on the chat response, equal to the offline engine's; refused with streaming and next
to completions' own echo+logprobs scoring."""

from __future__ import annotations

import httpx
import pytest
from pdserve import LLM, SamplingParams
from router_helpers import MODEL

PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]  # "Hello world", one byte per token
BODY = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "ignore_eos": True}


def check_against(scores: list, prompt: list[int], reference: LLM, k: int) -> None:  # type: ignore[type-arg]
    out = reference.generate([prompt], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k))[0]
    assert out.prompt_logprobs is not None and out.prompt_ranks is not None and out.prompt_top_logprobs is not None
    assert len(scores) == len(prompt) and scores[0] is None
    for i, entry in enumerate(scores[1:], start=1):
        own = entry[str(prompt[i])]
        assert own["logprob"] == pytest.approx(out.prompt_logprobs[i], abs=1e-5)
        assert own["rank"] == out.prompt_ranks[i] >= 1
        assert own["decoded_token"] == reference.tokenizer.decode([prompt[i]], skip_special_tokens=False)
        top = out.prompt_top_logprobs[i]
        assert top is not None and len(entry) == len(top) + (str(prompt[i]) not in map(str, top))
        for place, (token, logprob) in enumerate(top.items(), start=1):
            alternative = entry[str(token)]
            assert alternative["logprob"] == pytest.approx(logprob, abs=1e-5)
            if token != prompt[i]:
                assert alternative["rank"] == place


async def test_completions_score_the_prompt_on_every_choice(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    answer = await client.post("/v1/completions", json={**BODY, "prompt_logprobs": 3, "n": 2, "seed": 1})
    assert answer.status_code == 200, answer.text
    choices = answer.json()["choices"]
    for choice in choices:
        check_against(choice["prompt_logprobs"], PROMPT, reference_llm, 3)
    assert choices[0]["prompt_logprobs"] == choices[1]["prompt_logprobs"]
    plain = await client.post("/v1/completions", json=BODY)
    assert "prompt_logprobs" not in plain.json()["choices"][0]  # only when asked for
    zero = await client.post("/v1/completions", json={**BODY, "prompt_logprobs": 0})
    assert all(entry is None or len(entry) == 1 for entry in zero.json()["choices"][0]["prompt_logprobs"])


async def test_chat_scores_the_prompt_on_the_response(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    answer = await client.post("/v1/chat/completions", json={**chat, "prompt_logprobs": 1, "return_token_ids": True})
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    check_against(reply["prompt_logprobs"], reply["choices"][0]["prompt_token_ids"], reference_llm, 1)


async def test_what_cannot_be_answered_is_refused(client: httpx.AsyncClient) -> None:
    refusals = [
        {**BODY, "prompt_logprobs": 1, "stream": True},
        {**BODY, "prompt_logprobs": 1, "echo": True, "logprobs": 1},
        {**BODY, "prompt_logprobs": -1},
        {**BODY, "prompt_logprobs": 21},
        {**BODY, "prompt_logprobs": "2"},
    ]
    for body in refusals:
        answer = await client.post("/v1/completions", json=body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["param"] == "prompt_logprobs", answer.json()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 1, "stream": True}
    assert (await client.post("/v1/chat/completions", json=chat)).status_code == 400
