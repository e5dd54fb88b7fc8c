"""POST /v1/completions and /v1/chat/completions served without FastAPI's routing layer.

Per request FastAPI walks its routes, solves the endpoint's dependencies, builds the body field
and wraps the call in several layers; for a short streamed completion that was about a third of
the router's own time (docs/benchmarks.md, router overhead). These two routes carry nearly all
traffic, so they are dispatched here directly, to the same handlers, after the same middleware
(request id, API key, admission, body limit; app.py's RouterApp sends them down that chain ahead of
FastAPI's own layers). Every other path, and the OpenAPI description of these two, stays FastAPI's.

The body is read and validated exactly as FastAPI does it for a single pydantic body parameter
(strict content type: JSON only with an `application/json` or `+json` type; an empty body is a
missing field; errors located under "body"), and errors are answered by the same functions, so
clients see the same statuses and messages either way (tests/router/test_fast_routes.py
compares the two on a corpus of bad requests).
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pdserve.services.router.error_handlers import describe_validation_errors, http_error_response
from pdserve.services.router.errors import ApiError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Any, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    body_model: type[BaseModel]
    handler: Handler


class FastRoutes:
    """ASGI app serving POST on `routes` (path -> FastRoute); the caller sends nothing else here."""

    def __init__(self, routes: dict[str, FastRoute]) -> None:
        # path -> (validator of the body model, handler), built once
        self._routes = {path: (TypeAdapter(route.body_model), route.handler) for path, route in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        adapter, handler = self._routes[scope["path"]]
        request = Request(scope, receive)
        try:
            body = adapter.validate_python(await _body(request), from_attributes=True)
            response = await handler(body, request)
        except ValidationError as exc:
            response = describe_validation_errors(_located_in_body(exc.errors(include_url=False))).response()
        except _BodyError as exc:
            response = describe_validation_errors(exc.errors).response()
        except ApiError as exc:
            response = exc.response()
        except HTTPException as exc:
            response = http_error_response(request, exc)
        await response(scope, receive, send)


# What nearly every client sends; parsing it with the email package (as FastAPI does) cost about
# 20 Python calls per request. Exact strings only: any other spelling takes the full parse.
_PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})


class _BodyError(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


async def _body(request: Request) -> Any:
    """The body as FastAPI hands it to a pydantic body parameter: parsed JSON, raw bytes (wrong
    content type), or a missing-field error (empty)."""
    raw = await request.body()
    if not raw:
        raise _BodyError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    content_type = request.headers.get("content-type")
    if not content_type:
        return raw  # FastAPI's strict content type: no type, no JSON
    if content_type not in _PLAIN_JSON:  # anything else is parsed as FastAPI parses it
        message = email.message.Message()
        message["content-type"] = content_type
        subtype = message.get_content_subtype()
        if message.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
            return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        raise _BodyError([{**error, "ctx": {"error": exc.msg}}]) from None
    except Exception:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None


def _located_in_body(errors: list[Any]) -> list[Any]:
    return [{**error, "loc": ("body", *error.get("loc", ()))} for error in errors]
