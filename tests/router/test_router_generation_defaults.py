"""The model's sampling defaults fill what a request leaves out, and only that (vLLM's behavior)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL

PROMPT = "Once upon a time"
# top_k 1: sampling that is greedy, so the defaults' effect shows in the tokens; max_tokens 5: a cap.
DEFAULTS = {"temperature": 1.3, "top_k": 1, "max_tokens": 5}


@pytest.fixture
async def client_with_defaults(backend: LocalBackend, engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend, engine.tokenizer, model_name=MODEL, sampling_defaults=DEFAULTS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as client:
        yield client


async def completion(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "prompt": PROMPT, "ignore_eos": True, "return_token_ids": True, **body}
    response = await client.post("/v1/completions", json=request)
    assert response.status_code == 200, response.text
    return dict(response.json()["choices"][0])


async def test_defaults_fill_what_the_request_leaves_out(
    client_with_defaults: httpx.AsyncClient, reference_llm: LLM
) -> None:
    ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    greedy = reference_llm.generate([ids], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
    # Left out: top_k 1 from the model, so greedy tokens whatever the seed; capped at 5 tokens.
    for seed in (1, 2):
        choice = await completion(client_with_defaults, max_tokens=12, seed=seed)
        assert choice["token_ids"] == greedy.token_ids and choice["finish_reason"] == "length"
    # null means "the default" too, as in vLLM.
    assert (await completion(client_with_defaults, top_k=None, seed=3))["token_ids"] == greedy.token_ids
    # Set by the request: its own values win (top_k 0 at temperature 1.3 samples other tokens).
    sampled = SamplingParams(max_tokens=5, temperature=1.3, seed=4, ignore_eos=True)
    want = reference_llm.generate([ids], sampled)[0].token_ids
    assert (await completion(client_with_defaults, top_k=0, seed=4))["token_ids"] == want != greedy.token_ids
    # Chat: no max_tokens means up to the context's end, here capped by the model's max_new_tokens.
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "ignore_eos": True}
    chat = (await client_with_defaults.post("/v1/chat/completions", json=body)).json()
    assert chat["usage"]["completion_tokens"] == 5 and chat["choices"][0]["finish_reason"] == "length"


async def test_without_defaults_openai_defaults_apply(client: httpx.AsyncClient, reference_llm: LLM) -> None:
    choice = await completion(client, max_tokens=12, seed=4)
    ids = reference_llm.tokenizer(PROMPT)["input_ids"]
    want = reference_llm.generate([ids], SamplingParams(max_tokens=12, temperature=1.0, seed=4, ignore_eos=True))
    assert choice["token_ids"] == want[0].token_ids


@pytest.mark.parametrize("defaults", [{"top_p": 0}, {"stop": ["x"]}, {"max_tokens": 0}])
def test_bad_defaults_are_refused_at_creation(backend: LocalBackend, engine: LLMEngine, defaults: dict) -> None:
    with pytest.raises(ValueError):
        create_app(backend, engine.tokenizer, model_name=MODEL, sampling_defaults=defaults)


@pytest.mark.parametrize("command", ["router", "up"])
def test_a_bad_generation_config_stops_the_command_at_once(tmp_path: Path, command: str) -> None:
    argv = [sys.executable, "-m", "pdserve.cli", command, "--generation-config", str(tmp_path / "nope")]
    if command == "router":
        argv += ["--nats", "nats://127.0.0.1:1"]  # never reached: the check comes first
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"--generation-config {tmp_path / 'nope'}: not a folder" in done.stderr
