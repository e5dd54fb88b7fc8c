"""The router's HTTP app: OpenAI-compatible endpoints in front of any `Backend`.

The app only speaks HTTP and the Backend protocol; which workers serve a request, and how, is
the backend's business (in-process LocalBackend, or the NATS cluster backend). It owns no
backend lifecycle either: whoever created the backend starts and closes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from pdserve.errors import ModelLoadError
from pdserve.models.chat_template import check_chat_template
from pdserve.models.generation_defaults import check_sampling_defaults
from pdserve.services.router.admission import GENERATION_PATHS, AdmissionMiddleware
from pdserve.services.router.api_keys import ApiKeyMiddleware, bearer_scheme
from pdserve.services.router.api_requests import MAX_CHOICES, ChatCompletionRequest, CompletionRequest
from pdserve.services.router.body_limit import BodyLimitMiddleware
from pdserve.services.router.chat import chat_complete, chat_router
from pdserve.services.router.completions import complete, completions_router
from pdserve.services.router.context import RouterContext
from pdserve.services.router.cors import CorsPolicy
from pdserve.services.router.error_handlers import install_error_handlers
from pdserve.services.router.fast_routes import FastRoute, FastRoutes
from pdserve.services.router.openapi_docs import publish_limits
from pdserve.services.router.prompts import PromptTokenizer
from pdserve.services.router.reasoning import REASONING_PARSERS
from pdserve.services.router.request_context import RequestContextMiddleware
from pdserve.services.router.sampling import Limits
from pdserve.services.router.status_routes import models_router, status_router
from pdserve.services.router.tokenize_routes import tokenize_router
from pdserve.services.router.tool_parsers import TOOL_CALL_PARSERS
from pdserve.serving.backend import Backend
from starlette.types import ASGIApp, Receive, Scope, Send

# Generation requests served at once by one router; far above what a few workers batch, far
# below what would exhaust the router's memory or file descriptors.
DEFAULT_MAX_INFLIGHT = 1024


def create_app(
    backend: Backend,
    tokenizer: Any,
    *,
    model_name: str,
    api_keys: list[str] | None = None,
    request_timeout_s: float = 600.0,
    max_body_bytes: int = 4 << 20,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int | None = None,
    max_n: int = 8,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    tool_call_parser: str | None = None,
    sampling_defaults: Mapping[str, Any] | None = None,
    chat_template: str | None = None,
    reasoning_parser: str | None = None,
    fast_routes: bool = True,
    cors: CorsPolicy | None = None,
) -> FastAPI:
    """An app serving `model_name` through `backend`; `tokenizer` is that model's Hugging Face tokenizer.

    `api_keys` (None: no auth) guard /v1/*. A request fails with 504 `request_timeout_s` seconds
    after it arrives. Bodies over `max_body_bytes` get 413. `max_prompt_tokens` and
    `max_tokens_limit` (tokens) and `max_n` (choices per prompt) bound what one request may ask.
    At most `max_inflight` completion and chat requests are served at once; more get 429.
    The app's state holds the RouterContext as `app.state.router` (tests read its metrics).
    `tool_call_parser` (one of TOOL_CALL_PARSERS; None: none) reads the tool calls a model
    writes on its own, which tool_choice "auto" needs.
    `sampling_defaults` (the model's, from `generation_defaults`; None: OpenAI's) fill the
    sampling fields a request leaves out: temperature, top_p, top_k, min_p, repetition_penalty;
    its max_tokens caps every request.
    `chat_template` (template text, see models/chat_template.py; None: the tokenizer's own)
    renders chat conversations.
    `reasoning_parser` (one of REASONING_PARSERS; None: none) returns the model's thinking as
    `reasoning_content`, apart from `content`.
    `fast_routes` serves the two generation routes past FastAPI's routing layer (fast_routes.py);
    off, FastAPI routes them too (the tests compare both).
    `cors` (None: no CORS headers) lets browser apps on the origins it names call the API
    (cors.py); it runs before everything else, so preflights and refusals (401, 429) carry it too.
    """
    _check_positive(request_timeout_s=request_timeout_s, max_body_bytes=max_body_bytes, max_n=max_n)
    _check_positive(max_inflight=max_inflight)
    if max_n > MAX_CHOICES:
        raise ValueError(f"max_n must be at most {MAX_CHOICES}, got {max_n}")
    _check_positive(max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit)
    if chat_template is not None:
        try:
            check_chat_template(chat_template)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from None
    if not model_name:
        raise ValueError("model_name must be a non-empty string")
    if reasoning_parser is not None and reasoning_parser not in REASONING_PARSERS:
        raise ValueError(f"reasoning_parser must be one of {REASONING_PARSERS}, got {reasoning_parser!r}")
    if tool_call_parser is not None and tool_call_parser not in TOOL_CALL_PARSERS:
        raise ValueError(f"tool_call_parser must be one of {TOOL_CALL_PARSERS}, got {tool_call_parser!r}")
    ctx = RouterContext(
        backend=backend,
        tokenizer=tokenizer,
        prompts=PromptTokenizer(tokenizer, chat_template),
        model_name=model_name,
        limits=Limits(max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit, max_n=max_n),
        request_timeout_s=request_timeout_s,
        tool_call_parser=tool_call_parser,
        reasoning_parser=reasoning_parser,
        sampling_defaults=check_sampling_defaults(sampling_defaults or {}),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.prompts.close()

    app = RouterApp(
        title="pdserve router",
        summary="OpenAI-compatible completions and chat completions over pdserve workers",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.router = ctx
    install_error_handlers(app)
    v1_dependencies = [Depends(bearer_scheme)] if api_keys else []
    app.include_router(completions_router(ctx), dependencies=v1_dependencies)
    app.include_router(chat_router(ctx), dependencies=v1_dependencies)
    app.include_router(models_router(ctx), dependencies=v1_dependencies)
    app.include_router(tokenize_router(ctx), dependencies=v1_dependencies)
    app.include_router(status_router(ctx))
    publish_limits(app, ctx.limits)

    # The last added runs first: CORS, request context, the API key, admission, then the body limit;
    # so a request refused for its key or for capacity is answered before its body is read.
    middleware: list[tuple[Any, dict[str, Any]]] = [
        (BodyLimitMiddleware, {"max_body_bytes": max_body_bytes}),
        (AdmissionMiddleware, {"max_inflight": max_inflight, "metrics": ctx.metrics}),
        *([(ApiKeyMiddleware, {"api_keys": list(api_keys)})] if api_keys else []),
        (RequestContextMiddleware, {"metrics": ctx.metrics}),
        *([cors.middleware()] if cors is not None else []),
    ]
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    if fast_routes:
        # The two generation routes go through the same middleware (instances of their own, with
        # the same settings and the same shared metrics) straight to their handlers, past
        # FastAPI's routing and its outer layers (fast_routes.py).
        routes = {
            "/v1/completions": FastRoute(CompletionRequest, lambda body, request: complete(ctx, body, request)),
            "/v1/chat/completions": FastRoute(
                ChatCompletionRequest, lambda body, request: chat_complete(ctx, body, request)
            ),
        }
        chain: ASGIApp = FastRoutes(routes)
        for cls, options in middleware:
            chain = cls(chain, **options)
        app.fast_routes = chain
    return app


class RouterApp(FastAPI):
    """FastAPI, except that POSTs to the generation routes enter `fast_routes` (their middleware
    chain and handlers) directly. FastAPI's own outer layers (server-error, telemetry, app body
    limit) do nothing for them: the request-context middleware answers any error itself, and
    neither telemetry nor FastAPI's body limit is configured."""

    fast_routes: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_routes is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in GENERATION_PATHS
        ):
            scope["app"] = self
            await self.fast_routes(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be positive, got {value!r}")
