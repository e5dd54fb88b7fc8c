"""Router-wide admission: at most `max_inflight` generation requests at once; the next one gets 429 now.

Without a bound, a burst larger than the cluster can serve piles up in the router (one task, a
prompt and its queues per request) and every request waits longer, until clients time out. A
429 with `Retry-After` instead tells clients to back off while the requests already admitted
finish at full speed. The check runs before the body is read, so a refused request costs nothing.

An admitted request holds its slot until its response is sent (its stream included) or the
client goes away. Workers bound their own queues too (`--max-waiting`); this limit is the one in
front of them all.
"""

from __future__ import annotations

import structlog
from pdserve.services.router.errors import DEFAULT_RETRY_AFTER_S, ApiError
from pdserve.services.router.metrics import RouterMetrics
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger("pdserve.router.admission")

# Only generation holds backend capacity; /health, /metrics and /v1/models must answer under load.
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, max_inflight: int, metrics: RouterMetrics) -> None:
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
            raise ValueError(f"max_inflight must be a positive integer, got {max_inflight!r}")
        self.app = app
        self.max_inflight = max_inflight
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        if self.metrics.generations_in_flight >= self.max_inflight:
            self.metrics.admission_refusals += 1
            log.info("refused: the router is at its in-flight limit", limit=self.max_inflight)
            await _router_full(self.max_inflight).response()(scope, receive, send)
            return
        self.metrics.generations_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.generations_in_flight -= 1


def _router_full(limit: int) -> ApiError:
    return ApiError(
        429,
        f"the router is serving its limit of {limit} requests; retry later",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
    )
