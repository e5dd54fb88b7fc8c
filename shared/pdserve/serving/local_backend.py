"""A Backend that runs the engine in this process: no broker, no transfer.

Used by router tests and as the in-process baseline when measuring what the router and NATS
add per request and per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator

from pdserve.engine.llm_engine import LLMEngine
from pdserve.errors import InvalidRequestError
from pdserve.outputs import RequestOutput
from pdserve.protocol import TokenChunk
from pdserve.serving.backend import GenerateRequest, WorkerInfo
from pdserve.serving.chunks import chunk_from_output, error_chunk
from pdserve.serving.engine_loop import EngineLoop


class LocalBackend:
    def __init__(self, engine: LLMEngine, worker_id: str = "local") -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.loop = EngineLoop(engine, self._dispatch)
        self._queues: dict[str, asyncio.Queue[TokenChunk]] = {}
        self._started = False

    async def start(self) -> None:
        await self.loop.start()
        self._started = True

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def ready(self) -> bool:
        return self._started

    def workers(self) -> list[WorkerInfo]:
        e = self.engine
        return [
            WorkerInfo(
                id=self.worker_id,
                role="worker",
                pid=os.getpid(),
                host=socket.gethostname(),
                running=e.num_running,
                waiting=e.num_waiting,
                kv_blocks_used=e.kv_blocks_used,
                kv_blocks_total=e.kv_blocks_total,
                last_seen=time.time(),
            )
        ]

    async def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(chunk_from_output(out, self.worker_id))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        rid = request.request_id
        queue: asyncio.Queue[TokenChunk] = asyncio.Queue()
        self._queues[rid] = queue
        finished = False
        try:
            try:
                await self.loop.call(lambda: self.engine.add_request(rid, request.prompt_token_ids, request.params))
            except InvalidRequestError as exc:
                finished = True
                yield error_chunk(rid, self.worker_id, str(exc), 400)
                return
            while True:
                timeout = request.deadline - time.time()
                try:
                    # Not wait_for: on Python 3.11 it can swallow a cancel that lands as a chunk arrives.
                    async with asyncio.timeout(max(timeout, 0.001)):
                        chunk = await queue.get()
                except TimeoutError:
                    yield error_chunk(rid, self.worker_id, "request deadline passed", 504)
                    return
                finished = chunk.finish_reason is not None
                yield chunk
                if finished:
                    return
        finally:
            self._queues.pop(rid, None)
            if not finished:
                with contextlib.suppress(RuntimeError):
                    await self.loop.call(lambda: self.engine.abort_request(rid))

    async def close(self) -> None:
        await self.loop.stop()
