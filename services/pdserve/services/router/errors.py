"""Errors the router answers with, all in OpenAI's shape: `{"error": {message, type, param, code}}`.

Every failure a client can see goes through `ApiError`, so the status, the body and headers such
as `Retry-After` are decided in one place. Messages never carry tracebacks or internal details:
5xx messages say what happened in general terms and point at the request id in the logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

# OpenAI's error types by status; clients branch on the status, humans read the type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

# Seconds a client should wait before retrying a 429/503 when the backend names no better value.
DEFAULT_RETRY_AFTER_S = 1
# A backend's hint is trusted only this far: a bogus hour-long wait would idle every client.
MAX_RETRY_AFTER_S = 60


class ApiError(Exception):
    """An error response: HTTP `status`, a message for the client, and the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "internal_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def internal_error() -> ApiError:
    # The X-Request-Id response header finds the details in the router's logs.
    return ApiError(500, "internal server error; the router's logs have the details", code="internal_error")


def backend_error(status: int, message: str, retry_after_s: float | None = None) -> ApiError:
    """The error for a backend's error chunk: `status` is its `error_code` (0 if it gave none).

    4xx, 503 and 504 messages come from our own workers and are meant for clients; any other
    code is an internal failure whose message stays in the logs.
    """
    if status in (429, 503):
        code = "rate_limit_exceeded" if status == 429 else "no_capacity"
        headers = {"Retry-After": str(retry_after_seconds(retry_after_s))}
        return ApiError(status, message or "no capacity; retry later", code=code, headers=headers)
    if status == 504:
        return ApiError(504, message or "request deadline passed", code="timeout")
    if 400 <= status < 500:
        return ApiError(status, message or "the backend refused the request")
    return internal_error()


def retry_after_seconds(hint_s: float | None) -> int:
    """The Retry-After value (whole seconds, 1 to MAX_RETRY_AFTER_S) for a backend's hint in seconds."""
    if hint_s is None or not math.isfinite(hint_s):
        return DEFAULT_RETRY_AFTER_S
    # Rounded up: clients read it as "not before"; 0 would invite an immediate retry storm.
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(hint_s)))
