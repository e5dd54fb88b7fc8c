"""What the HTTP router needs from whatever serves requests behind it.

`ClusterBackend` dispatches over NATS to prefill, decode and colocated workers; `LocalBackend`
runs an engine in-process (tests, and the baseline for measuring router overhead).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from pdserve.protocol import TokenChunk
from pdserve.sampling_params import SamplingParams


@dataclass(slots=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    deadline: float  # Unix seconds; past it the request fails with a timeout error (504)


@dataclass(slots=True)
class WorkerInfo:
    """One live worker as `/cluster` shows it."""

    id: str
    role: str  # prefill | decode | worker
    pid: int
    host: str
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    last_seen: float = 0.0
    ucx_address: str = ""
    draining: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "role": self.role,
            "pid": self.pid,
            "host": self.host,
            "running": self.running,
            "waiting": self.waiting,
            "kv_blocks_used": self.kv_blocks_used,
            "kv_blocks_total": self.kv_blocks_total,
            "draining": self.draining,
        }


class Backend(Protocol):
    """The router's view of the serving side.

    `generate` is an async generator of TokenChunk: token ids in output order (`index` says
    where each chunk starts), the last one with `finish_reason`. A chunk with `error` set ends
    the stream; its `error_code` is the HTTP status to answer with if nothing was sent yet
    (429/503 no capacity, 400 bad request, 504 deadline, 500 internal). Closing the generator
    early (`aclose()`, e.g. the client went away) cancels the request and frees its KV.
    """

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]: ...

    def workers(self) -> list[WorkerInfo]: ...

    def ready(self) -> bool:
        """True once at least one prefill-capable and one decode-capable worker are live."""
        ...

    @property
    def max_model_len(self) -> int: ...

    async def close(self) -> None: ...
