"""The outermost layer of every HTTP request: its id, its log context, its metrics, the last resort.

- `X-Request-Id` is taken from the client when it is a sane token (else generated), echoed in
  the response and bound into structlog's context, so every log line of the request carries it,
  including lines from tasks the request starts.
- Status counts and in-flight requests for /metrics; one access log line per request.
- An exception nothing else handled becomes a 500 in OpenAI's shape, with the traceback in the
  log and never in the response.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import structlog
from pdserve.services.router.errors import internal_error
from pdserve.services.router.metrics import RouterMetrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("pdserve.router.http")

REQUEST_ID_HEADER = b"x-request-id"
QUIET_PATHS = frozenset({"/health", "/ping", "/metrics"})
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: RouterMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight += 1
        # bind/reset rather than the bound_contextvars() context manager: the same, without a
        # generator per request.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error", method=scope["method"], path=scope["path"])
                if status == 0:
                    response = internal_error().response()
                    await response(scope, receive, send_with_id)
                else:
                    status = 500  # the response had started; the client sees a cut stream
            finally:
                self.metrics.in_flight -= 1
                self.metrics.observe_request(scope["path"], status)
                # Probes and scrapes come every few seconds; they are logged only at debug level.
                log.log(
                    logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO,
                    "http request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex
