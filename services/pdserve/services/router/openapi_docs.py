"""What /openapi.json says about the generation endpoints beyond what FastAPI derives itself.

Every status the router can send is listed with OpenAI's error body, and the request schemas
carry this server's limits: the schema fuzzer checks requests and responses against both.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pdserve.services.router.api_responses import ErrorResponse
from pdserve.services.router.sampling import Limits
from pydantic import BaseModel

ERROR_STATUSES = {
    400: "invalid request (validation, context length, unsupported field)",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body too large",
    429: "no capacity right now; see Retry-After",
    500: "internal error",
    503: "no workers or no capacity; see Retry-After",
    504: "request deadline passed",
}

# Before OpenAPI 3.2 (FastAPI writes 3.1), the schema of an event stream describes one event.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a JSON chunk, a JSON error object, or `[DONE]` to end the stream"}
    },
}


def generation_responses(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "model": body,
            "description": "the response, or with `stream: true` a text/event-stream of `data: {chunk}` events "
            "ending with `data: [DONE]`",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        }
    }
    for status, description in ERROR_STATUSES.items():
        responses[status] = {"model": ErrorResponse, "description": description}
    return responses


# What /tokenize and /detokenize can answer besides 200 (they reach no worker).
TOKENIZER_STATUSES = (400, 401, 404, 413, 500)


def error_responses(statuses: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in statuses}


def publish_limits(app: FastAPI, limits: Limits) -> None:
    """Write this server's own maxima (`max_n`, `max_tokens_limit`) into the request schemas of
    /openapi.json, so that clients and the schema fuzzer see the limits the router enforces.

    The pydantic models carry only the fixed bounds; these are set per server. The context
    length is left out: it changes as workers come and go, and the router checks it per request.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            for name, token_fields in (
                ("CompletionRequest", ("max_tokens",)),
                ("ChatCompletionRequest", ("max_tokens", "max_completion_tokens")),
            ):
                fields = schemas[name]["properties"]
                fields["n"]["maximum"] = limits.max_n
                if limits.max_tokens_limit is not None:
                    for field in token_fields:
                        _integer_alternative(fields[field])["maximum"] = limits.max_tokens_limit
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _integer_alternative(field: dict[str, Any]) -> dict[str, Any]:
    # `int | None` is {"anyOf": [{"type": "integer", ...}, {"type": "null"}]}.
    return next(option for option in field.get("anyOf", [field]) if option.get("type") == "integer")
