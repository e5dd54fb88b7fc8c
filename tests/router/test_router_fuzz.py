"""Schema fuzzing: requests generated from /openapi.json, valid and invalid, never get a 5xx.

Schemathesis reads the router's own schema and sends, for every operation, bodies that fit it
and bodies that break it in one place (wrong types, out-of-range numbers, unknown fields,
missing fields), streaming included. Besides "no server error" it checks that responses match
the schema (status codes, content types, bodies) and that schema-breaking requests are refused.

The router runs on the tiny model with small limits (max_tokens, n) so that accepted requests
finish in milliseconds; the run is derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the `test` extras")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)
from pdserve.engine.llm_engine import LLMEngine  # noqa: E402
from pdserve.protocol import TokenChunk  # noqa: E402
from pdserve.services.router import create_app  # noqa: E402
from pdserve.serving.backend import GenerateRequest  # noqa: E402
from router_helpers import MODEL, ScriptedBackend  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from threaded_router import ThreadedRouter  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
STREAM_CHECKS = [c for c in CHECKS if c is not negative_data_rejection]
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

# Examples per operation and mode; about 20 s for all six operations on two CPU cores.
MAX_EXAMPLES = 60


# Small limits keep accepted requests to milliseconds; the schema publishes them, so most
# generated valid requests are accepted rather than refused for asking too much.
APP_OPTIONS = {"max_tokens_limit": 8, "max_n": 2, "request_timeout_s": 20.0}


def router_schema() -> dict[str, Any]:
    """The schema the fuzzed router publishes (the backend and tokenizer do not change it)."""
    return create_app(ScriptedBackend(refuse), None, model_name=MODEL, **APP_OPTIONS).openapi()


async def refuse(request: GenerateRequest) -> AsyncIterator[TokenChunk]:
    raise AssertionError("only the schema of this app is used")
    yield  # pragma: no cover


# Loaded when the module is collected, as schemathesis needs (its fixture-based loading breaks
# on pytest 9), and from the app itself rather than over HTTP.
schema = schemathesis.openapi.from_dict(router_schema())


@pytest.fixture(scope="module")
def router(engine: LLMEngine) -> Iterator[ThreadedRouter]:
    with ThreadedRouter(engine, **APP_OPTIONS) as router:
        yield router


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, router: ThreadedRouter) -> None:
    case.call_and_validate(base_url=router.url, checks=CHECKS, timeout=30)
    if case.operation.path in GENERATION_PATHS and isinstance(case.body, dict) and case.body.get("stream") is not True:
        # Generated bodies leave most optional fields out, so `stream` is rarely true: send each
        # streamed as well. Negative cases may now be valid (the broken field may have been stream).
        case.body = {**case.body, "stream": True}
        case.body.setdefault("stream_options", {"include_usage": True})
        case.call_and_validate(base_url=router.url, checks=STREAM_CHECKS, timeout=30)
