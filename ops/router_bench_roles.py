"""The processes ops/bench_router_overhead.py starts besides nats-server and `pdserve router`.

- `serve_local`: the HTTP router over LocalBackend (engine in that process): HTTP cost alone.
- `serve_instant`, `serve_bare`: the HTTP router over a backend that answers at once, and a
  bare ASGI app on the same server: the router's own cost per request, and the floor under it.
- `token_source`: a fake colocated worker that speaks the protocol exactly (heartbeats, task
  ack, TokenChunk of one token per decode step on the stream subject) with no model behind it,
  so the router, not the model, is what limits streamed tokens/s.
- `stream_clients`: closed-loop streaming HTTP clients counting the tokens they receive.

The HTTP client is a few lines over asyncio streams on purpose: httpx costs a few hundred
microseconds per request and a lot of CPU per event, which would be charged to the router.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

# Byte tokenizer ids of ASCII letters: each decodes to one character on its own, so the router
# sends exactly one SSE event per token and clients can count tokens by counting events.
LETTER_TOKENS = list(range(ord("a"), ord("z") + 1))
EVENT = b"data: {"


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; `post_stream` returns once the whole body is read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, host)

    async def post_stream(self, path: str, body: dict[str, object], on_data: object = None) -> int:
        """POST `body`; call `on_data(bytes)` per body piece; return the number of SSE events."""
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"HTTP error: {status!r} {await self.reader.read(2000)!r}")
        chunked, length = False, 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name.lower() == "content-length":
                length = int(value)
        if not chunked:
            data = await self.reader.readexactly(length)
            return data.count(EVENT)
        events = 0
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return events
            # The router writes whole events per HTTP chunk, so no event straddles two chunks.
            count = data.count(EVENT)
            events += count
            if on_data is not None:
                on_data(count)  # type: ignore[operator]

    def close(self) -> None:
        self.writer.close()


async def serve_local(port: int) -> None:
    """The router app over an in-process LocalBackend (built-in model), until killed."""
    from pdserve.engine.llm_engine import LLMEngine
    from pdserve.models import builtin_model_path
    from pdserve.services.router.app import create_app
    from pdserve.services.router.server import run_router
    from pdserve.serving.local_backend import LocalBackend
    from transformers import AutoTokenizer

    backend = LocalBackend(LLMEngine.from_model(None, dtype="float32"))
    await backend.start()
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)
    await run_router(create_app(backend, tokenizer, model_name="pdserve-tiny"), "127.0.0.1", port)


async def serve_instant(port: int) -> None:
    """The HTTP router over a backend that answers every request at once with one token and no
    model: what the router's own HTTP path costs per request (`http-floor`, path n)."""
    from collections.abc import AsyncIterator

    from pdserve.models import builtin_model_path
    from pdserve.protocol import TokenChunk
    from pdserve.services.router.app import create_app
    from pdserve.services.router.server import run_router
    from pdserve.serving.backend import GenerateRequest, WorkerInfo
    from transformers import AutoTokenizer

    class InstantBackend:
        max_model_len = 2048

        def ready(self) -> bool:
            return True

        def workers(self) -> list[WorkerInfo]:
            return []

        async def close(self) -> None:
            pass

        async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
            n = len(request.prompt_token_ids)
            token = [LETTER_TOKENS[0]]
            yield TokenChunk(request.request_id, 0, token, "instant", finish_reason="length", prompt_tokens=n)

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)
    await run_router(create_app(InstantBackend(), tokenizer, model_name="pdserve-tiny"), "127.0.0.1", port)


async def serve_bare(port: int) -> None:
    """A bare ASGI app on the router's own server setup, answering every POST with a fixed
    one-token SSE body: the floor under path n (uvicorn, httptools, the loop, the sockets)."""
    from pdserve.services.router.server import run_router
    from starlette.types import Receive, Scope, Send

    body = (
        b'data: {"id":"cmpl-0","object":"text_completion","created":0,"model":"pdserve-tiny","choices":'
        b'[{"index":0,"text":"a","logprobs":null,"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
    )
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    await run_router(app, "127.0.0.1", port)  # any ASGI app serves


async def token_source(nats_url: str, cluster: str, worker_id: str) -> None:
    """A colocated worker without a model: every accepted task gets `max_tokens` chunks of one
    token, one per request per "step", each step as fast as the broker takes them."""
    import nats
    from pdserve.protocol import GenerateTask, Subjects, TaskAck, TokenChunk, WorkerHeartbeat, decode, encode

    subjects = Subjects(cluster)
    nc = await nats.connect(nats_url, name=worker_id)
    active: dict[str, tuple[GenerateTask, int]] = {}
    work = asyncio.Event()

    async def on_task(msg: object) -> None:
        task = decode(msg.data, GenerateTask)  # type: ignore[attr-defined]
        await msg.respond(encode(TaskAck(accepted=True, worker_id=worker_id)))  # type: ignore[attr-defined]
        active[task.request_id] = (task, 0)
        work.set()

    async def heartbeats() -> None:
        while True:
            beat = WorkerHeartbeat(
                worker_id=worker_id,
                role="worker",
                pid=os.getpid(),
                host=socket.gethostname(),
                model="pdserve-tiny",
                model_fingerprint="none",
                running=len(active),
                waiting=0,
                kv_blocks_used=0,
                kv_blocks_total=1 << 20,
                kv_block_size=16,
                max_model_len=1 << 20,
                sent_at=time.time(),
                interval_s=0.5,
            )
            await nc.publish(subjects.heartbeat, encode(beat))
            await asyncio.sleep(0.5)

    await nc.subscribe(subjects.task(worker_id), cb=on_task)
    beat_task = asyncio.create_task(heartbeats())
    while True:
        await work.wait()
        for rid, (task, index) in list(active.items()):
            max_tokens = int(task.params["max_tokens"])
            token = LETTER_TOKENS[index % len(LETTER_TOKENS)]
            last = index + 1 == max_tokens
            chunk = TokenChunk(rid, index, [token], worker_id, prompt_tokens=len(task.prompt_token_ids))
            if last:
                chunk.finish_reason = "length"
                chunk.text = "".join(chr(LETTER_TOKENS[i % len(LETTER_TOKENS)]) for i in range(max_tokens))
                del active[rid]
            else:
                active[rid] = (task, index + 1)
            await nc.publish(task.stream_subject, encode(chunk))
        if not active:
            work.clear()
        await asyncio.sleep(0)  # let acks and heartbeats through between steps
    beat_task.cancel()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_clients(
    port: int, concurrency: int, max_tokens: int, warmup_s: float, seconds: float, pids: dict[str, int]
) -> dict[str, object]:
    """`concurrency` clients, each streaming requests back to back; tokens counted in the window
    [warmup_s, warmup_s + seconds). CPU seconds of `pids` (and this process) over the window."""
    start = time.monotonic()
    begin, end = start + warmup_s, start + warmup_s + seconds
    counted = [0]
    requests, short = [0], [0]
    body = {"model": "pdserve-tiny", "prompt": "hello", "max_tokens": max_tokens, "stream": True, "temperature": 0}

    def count(events: int) -> None:
        if begin <= time.monotonic() < end:
            counted[0] += events

    async def client() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            while time.monotonic() < end:
                events = await conn.post_stream("/v1/completions", body, count)
                requests[0] += 1
                short[0] += events != max_tokens
        finally:
            conn.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(max(begin - time.monotonic(), 0))
    pids = {**pids, "clients": os.getpid()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(max(end - time.monotonic(), 0))
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.gather(*tasks)
    return {
        "tokens_per_s": counted[0] / seconds,
        "requests": requests[0],
        "requests_with_wrong_event_count": short[0],
        "cpu_share": {name: (cpu1[name] - cpu0[name]) / seconds for name in pids},
        "router_tokens_per_cpu_s": counted[0] / max(cpu1["router"] - cpu0["router"], 1e-9),
    }
