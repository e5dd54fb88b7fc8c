"""The messages services exchange over NATS (see docs/protocol.md for subjects and flow).

Field units: times are Unix seconds (float), sizes bytes, lengths tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pdserve.errors import InvalidRequestError, ProtocolError
from pdserve.sampling_params import SamplingParams

ROLES = ("prefill", "decode", "worker")


@dataclass(slots=True)
class WorkerHeartbeat:
    """Published by every worker each heartbeat interval; the cluster view is built from these."""

    worker_id: str
    role: str  # prefill | decode | worker (colocated)
    pid: int
    host: str
    model: str
    model_fingerprint: str
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_block_size: int
    max_model_len: int
    sent_at: float
    ucx_address: str = ""  # decode workers: where prefill workers push KV
    draining: bool = False
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")


@dataclass(slots=True)
class RouterHeartbeat:
    """Published by every router each interval, so that workers can tell when a router has gone
    (killed, crashed) and stop the requests it can no longer deliver (router_watch.py)."""

    router_id: str
    sent_at: float
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.router_id:
            raise ValueError("router_id must not be empty")
        if not 0 < self.interval_s <= 3600:
            raise ValueError(f"interval_s must be in (0, 3600], got {self.interval_s!r}")


_PARAM_FIELDS = tuple(f.name for f in fields(SamplingParams))


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    # What dataclasses.asdict gives for these flat fields (lists copied), without its recursive
    # deep copy: about 70 Python calls per request on the router's path to the worker.
    wire = {name: getattr(params, name) for name in _PARAM_FIELDS}
    wire["stop"], wire["stop_token_ids"] = list(params.stop), list(params.stop_token_ids)
    # msgpack maps take string keys only; SamplingParams reads decimal strings back as ids.
    wire["logit_bias"] = {str(token): bias for token, bias in params.logit_bias.items()}
    return wire


def params_from_wire(data: dict[str, Any]) -> SamplingParams:
    allowed = set(SamplingParams.__dataclass_fields__)
    try:
        return SamplingParams(**{k: v for k, v in data.items() if k in allowed})
    except (InvalidRequestError, TypeError) as exc:
        raise ProtocolError(f"bad sampling params: {exc}") from None


@dataclass(slots=True)
class GenerateTask:
    """Router -> prefill worker (with `decode_worker`) or colocated worker (without).

    Output goes to `stream_subject` as TokenChunk messages.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: dict[str, Any]
    stream_subject: str
    deadline: float
    decode_worker: str = ""  # the decode worker the router chose; "" for a colocated worker
    # Migration: output tokens already delivered to the client. The worker recomputes them
    # with the prompt and continues at output index len(resume_token_ids).
    resume_token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class TaskAck:
    """Reply to a GenerateTask or a KvOffer admission check."""

    accepted: bool
    reason: str = ""
    code: int = 200  # HTTP-like: 429 busy, 503 unavailable, 400 bad request
    # Who answers: the router waits for this worker's ack, not a late one from a worker it gave
    # up on. Empty from workers older than this field (their acks are taken as before).
    worker_id: str = ""


@dataclass(slots=True)
class KvOffer:
    """Prefill -> decode (request/reply): a prefilled request whose KV is ready to push."""

    request_id: str
    prompt_token_ids: list[int]
    first_token: int
    params: dict[str, Any]
    layout: dict[str, Any]  # KvLayout.to_dict()
    layer_nbytes: int  # bytes per layer (each layer is one [2, tokens, kv_heads, head_dim] tensor)
    stream_subject: str
    deadline: float
    first_logprob: float | None = None
    num_cached_tokens: int = 0
    # The last `resumed_tokens` of prompt_token_ids are output tokens delivered before a
    # migration; `first_token` is then output index `resumed_tokens`.
    resumed_tokens: int = 0
    # The first token's top alternatives (params' top_logprobs), as ids and their logprobs
    # (protocol/top_logprobs.py).
    first_top_token_ids: list[int] | None = None
    first_top_logprobs: list[float] | None = None


@dataclass(slots=True)
class KvAdmission:
    """Decode -> prefill reply to a KvOffer: a ticket to push against, or a refusal."""

    accepted: bool
    ticket: int = 0
    ucx_address: str = ""
    lease_s: float = 0.0
    reason: str = ""
    code: int = 200


@dataclass(slots=True)
class TokenChunk:
    """Worker -> router on the request's stream subject.

    `index` is the output position of `token_ids[0]`, so the router can drop duplicates and
    detect gaps whichever worker sent the chunk. The finishing chunk has `finish_reason`
    (stop | length | abort | error), the final `text` (cut at a stop string) and usage.
    With top_logprobs asked for, `top_token_ids[i]` and `top_logprobs[i]` are token i's most
    likely alternatives and their logprobs, best first (protocol/top_logprobs.py). With
    prompt_logprobs asked for, the chunk of output index 0 also scores the prompt:
    `prompt_logprobs[i]` is the logprob of prompt token i + 1 (the first has none), and
    `prompt_top_*` its alternatives, `prompt_ranks[i]` its rank (vLLM's: 1 for the most likely).
    """

    request_id: str
    index: int
    token_ids: list[int]
    worker_id: str
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    text: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""
    error_code: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    top_token_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None
    prompt_logprobs: list[float] | None = None
    prompt_top_token_ids: list[list[int]] | None = None
    prompt_top_logprobs: list[list[float]] | None = None
    prompt_ranks: list[int] | None = None
    stop_reason: str | int | None = None  # the finishing chunk's: the stop string or stop token id


@dataclass(slots=True)
class CancelRequest:
    """Router -> every worker (broadcast): stop this request and free what it holds."""

    request_id: str
    reason: str = "client disconnected"
