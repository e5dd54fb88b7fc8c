"""Streams one request to an OpenAI-compatible endpoint and records when every chunk arrived.

Speaks `/v1/completions` (token-id or text prompts) and `/v1/chat/completions` (text prompts),
always with `stream: true` and `stream_options.include_usage`, so the output token count comes
from the server's own usage report; a server that sends no usage is counted from the chunks'
`token_ids` (vLLM's `return_token_ids`), else as one token per chunk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pdserve.bench.datasets import BenchRequest
from pdserve.bench.metrics import RequestTimeline
from pdserve.bench.sse_lines import sse_lines

ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how requests are sent. `model` is the name the server serves."""

    base_url: str
    model: str
    path: str = "/v1/completions"
    api_key: str | None = None
    ignore_eos: bool = False
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    @property
    def is_chat(self) -> bool:
        return self.path.rstrip("/").endswith("/chat/completions")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.is_chat:
            if not isinstance(request.prompt, str):
                raise ValueError("the chat endpoint needs text prompts: pass --tokenizer")
            body["messages"] = [{"role": "user", "content": request.prompt}]
            body["max_completion_tokens"] = request.output_len
        else:
            body["prompt"] = request.prompt
            body["max_tokens"] = request.output_len
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body


def new_http_client(timeout_s: float) -> httpx.AsyncClient:
    """One client for a whole run. No pool limit: a request waiting for a free connection
    would count that wait as server latency."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits)


async def send_request(client: httpx.AsyncClient, endpoint: Endpoint, request: BenchRequest) -> RequestTimeline:
    """Sends `request` and returns its timeline; failures are recorded in `error`, never raised."""
    body = endpoint.body(request)
    timeline = RequestTimeline(start_s=time.perf_counter(), prompt_tokens=request.prompt_len)
    streamed_ids = 0
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", endpoint.url, json=body, headers=endpoint.headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                timeline.error = f"HTTP {response.status_code}: {text[:ERROR_TEXT_LIMIT]}"
                return timeline
            async for line in sse_lines(response):  # not aiter_lines: see sse_lines.py
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    timeline.error = f"stream error: {json.dumps(event['error'])[:ERROR_TEXT_LIMIT]}"
                    break
                if choices := event.get("choices"):
                    timeline.chunk_s.append(now)
                    streamed_ids += len(choices[0].get("token_ids") or ())
                if event.get("usage"):
                    usage = event["usage"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        timeline.error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        return timeline
    if usage is not None:
        timeline.output_tokens = int(usage.get("completion_tokens") or 0)
        timeline.prompt_tokens = int(usage.get("prompt_tokens") or request.prompt_len)
    else:
        timeline.output_tokens = streamed_ids or len(timeline.chunk_s)
    if timeline.error is None and not timeline.chunk_s:
        timeline.error = "the stream ended without output"
    return timeline


async def served_model(client: httpx.AsyncClient, base_url: str, api_key: str | None) -> str:
    """The first model the server lists at /v1/models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = await client.get(base_url.rstrip("/") + "/v1/models", headers=headers)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/v1/models lists no model; pass --model")
    return str(models[0]["id"])
