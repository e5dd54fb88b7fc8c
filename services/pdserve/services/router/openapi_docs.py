"""What /openapi.json says the generation endpoints answer, besides their 200 JSON body.

The schema fuzzer checks every response against this, so each status the router can send is
listed with OpenAI's error body.
"""

from __future__ import annotations

from typing import Any

from pdserve.services.router.api_responses import ErrorResponse
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


def generation_responses(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "model": body,
            "description": "the response, or with `stream: true` a text/event-stream of `data: {chunk}` events "
            "ending with `data: [DONE]`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }
    for status, description in ERROR_STATUSES.items():
        responses[status] = {"model": ErrorResponse, "description": description}
    return responses
