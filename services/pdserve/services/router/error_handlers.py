"""Exception handlers that turn every error FastAPI or a route raises into OpenAI's error shape.

FastAPI answers validation failures with 422 and `{"detail": [...]}`; OpenAI clients expect 400
and `{"error": {...}}`, so validation errors (bad JSON included) become one 400 naming the field.
Unexpected exceptions are answered in `request_context.py`, which sees them after Starlette's own
handlers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pdserve.services.router.errors import ApiError, invalid_request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

# pydantic names each alternative of a union in the error location ("str", "list[str]",
# "list[constrained-int]"); they are not field names, so messages leave them out.
_PRIMITIVES = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "constrained-int", "constrained-float"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return describe_validation_errors(exc.errors()).response()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return http_error_response(request, exc)


def http_error_response(request: Request, exc: HTTPException) -> Response:
    # Routing (404, 405) and body parsing (400) raise these; keep their status and headers (Allow).
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see /openapi.json"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    error = ApiError(exc.status_code, message, headers=exc.headers)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def describe_validation_errors(errors: Sequence[Any]) -> ApiError:
    """One 400 for pydantic's error list: the most specific error, its field path and the field."""
    if not errors:
        return invalid_request("invalid request")
    first = errors[0]
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes | bytearray):
        # The body arrived as bytes: FastAPI reads JSON only under a JSON content type, and
        # pydantic's "valid dictionary" message would send the client looking in the body.
        return invalid_request("the body was not read as JSON: send it with the header Content-Type: application/json")
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return invalid_request(f"request body is not valid JSON: {detail}".rstrip(": "))
    paths = [_field_path(e.get("loc", ())) for e in errors]
    target = paths[0]
    same_field = [e for e, p in zip(errors, paths, strict=True) if p == target]
    at_field = len(same_field) > 1 and all(
        len(e.get("loc", ())) == len(same_field[0].get("loc", ())) for e in same_field
    )
    fitting = [e for e in same_field if not str(e.get("type", "")).endswith("_type")]
    if at_field and fitting:
        # One alternative had the right type but a wrong value (a surrogate in a string): say that.
        message = _message(fitting[0])
    elif at_field:
        # Every alternative of a union failed at the field itself: list what would have fit.
        options = [_readable_type(e["loc"][-1]) for e in same_field if isinstance(e["loc"][-1], str)]
        message = f"expected one of: {', '.join(dict.fromkeys(options))}"
    else:
        # Otherwise the error of the alternative that got furthest is the most helpful
        # (["a", 3] fails as list[str] at item 1, not as list[int] at item 0).
        best = max(errors, key=_progress)
        target = _field_path(best.get("loc", ()))
        message = _message(best)
    top = target.split(".", 1)[0] if target else None
    return invalid_request(f"{target}: {message}" if target else message, param=top)


def _message(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown or unsupported field"
    if error.get("type") == "missing":
        return "field required"
    if error.get("type") in ("string_too_short", "too_short") and (error.get("ctx") or {}).get("min_length") == 1:
        return "must not be empty"
    if error.get("type") == "value_error":
        return str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return str(error.get("msg", "invalid value"))


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if not _is_union_tag(p)]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts)


def _progress(error: Any) -> tuple[int, list[int], bool]:
    # Deeper, then at a later index, then a wrong value of the right type over a wrong type.
    loc = [p for p in error.get("loc", ()) if not _is_union_tag(p)]
    return len(loc), [p for p in loc if isinstance(p, int)], not str(error.get("type", "")).endswith("_type")


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _PRIMITIVES)


def _readable_type(tag: str) -> str:
    # "function-after[_utf8_encodable(), str]" -> "str"; "list[constrained-int]" -> "list[int]"
    tag = re.sub(r"function-\w+\[[^,\]]*, ([^\]]+)\]", r"\1", tag)
    return re.sub(r"constrained-(\w+)", r"\1", tag)
