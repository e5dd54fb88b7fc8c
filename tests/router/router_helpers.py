"""Helpers for the router tests: SSE parsing, a scripted backend, waiting for a condition."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from pdserve.protocol import TokenChunk
from pdserve.serving.backend import GenerateRequest, WorkerInfo

MODEL = "tiny"  # the name the test apps serve the built-in model under

Script = Callable[[GenerateRequest], AsyncIterator[TokenChunk]]


def sse_data(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded, with "[DONE]" kept as the string."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def streamed_text(events: list[Any], index: int = 0, chat: bool = False) -> str:
    parts = []
    for event in events:
        if event == "[DONE]" or "error" in event:
            continue
        for choice in event["choices"]:
            if choice["index"] == index:
                parts.append((choice["delta"].get("content") or "") if chat else choice["text"])
    return "".join(parts)


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def assert_error(response: httpx.Response, status: int, param: str | None = None, *words: str) -> dict:
    """The response is `status` in OpenAI's error shape, naming `param` and containing `words`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]
    return error


def chunk(index: int, token_ids: list[int], **fields: Any) -> TokenChunk:
    return TokenChunk(request_id="r", index=index, token_ids=token_ids, worker_id="fake", **fields)


class ScriptedBackend:
    """A Backend whose `generate` runs `script(request)`: for paths LocalBackend cannot take
    (refusals, mid-stream errors, duplicated or reordered chunks, hangs)."""

    def __init__(self, script: Script, max_model_len: int = 2048, ready: bool = True) -> None:
        self.script = script
        self._max_model_len = max_model_len
        self._ready = ready
        self.requests: list[GenerateRequest] = []

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        self.requests.append(request)
        return self.script(request)

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo("fake-0", "worker", 1, "host", 0, 0, 0, 16)]

    def ready(self) -> bool:
        return self._ready

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def close(self) -> None:
        pass
