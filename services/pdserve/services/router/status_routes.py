"""GET /v1/models, /health, /cluster, /metrics and /version: what is served and how the cluster is doing."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from pdserve.services.router.api_responses import (
    ClusterResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    VersionResponse,
)
from pdserve.services.router.context import RouterContext
from pdserve.services.router.errors import DEFAULT_RETRY_AFTER_S
from pdserve.services.router.vllm_metrics import render_vllm_metrics
from pdserve.services.router.worker_gauges import render_worker_gauges
from starlette.responses import JSONResponse, PlainTextResponse, Response

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
try:
    _VERSION = version("pdserve")
except PackageNotFoundError:  # run from a source tree that was never installed
    _VERSION = "unknown"


def models_router(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", response_model=ModelList, summary="The served model (OpenAI-compatible)")
    async def list_models() -> ModelList:
        card = ModelCard(
            id=ctx.model_name,
            object="model",
            created=ctx.created,
            owned_by="pdserve",
            max_model_len=ctx.backend.max_model_len,
        )
        return ModelList(object="list", data=[card])

    return router


def status_router(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "no prefill- and decode-capable workers yet"}},
        summary="200 when requests can be served, else 503",
    )
    async def health() -> Response:
        if ctx.backend.ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            {"status": "unavailable"}, status_code=503, headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)}
        )

    # vLLM's /ping, for hosts that probe it (Amazon SageMaker sends GET and POST): /health's answer.
    for method in ("GET", "POST"):
        router.add_api_route(
            "/ping",
            health,
            methods=[method],
            operation_id=f"ping_{method.lower()}",
            response_model=HealthResponse,
            responses={503: {"model": HealthResponse, "description": "no prefill- and decode-capable workers yet"}},
            summary="The same as /health (vLLM's /ping)",
        )

    @router.get("/version", response_model=VersionResponse, summary="The router's pdserve version (as vLLM's /version)")
    async def router_version() -> VersionResponse:
        return VersionResponse(version=_VERSION)

    @router.get("/cluster", response_model=ClusterResponse, summary="Live workers and their load")
    async def cluster() -> ClusterResponse:
        return ClusterResponse(workers=[w.as_json() for w in ctx.backend.workers()])

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
        summary="Counters in Prometheus' text format",
    )
    async def metrics() -> Response:
        workers = ctx.backend.workers()
        text = ctx.metrics.render() + render_worker_gauges(workers)
        text += render_vllm_metrics(ctx.metrics, workers, ctx.model_name)
        return Response(text, media_type=PROMETHEUS_TEXT)

    return router
