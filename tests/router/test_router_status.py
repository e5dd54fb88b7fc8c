"""/health, /cluster, /v1/models, /metrics, request ids and the log context."""

from __future__ import annotations

import httpx
import structlog
from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import create_app
from router_helpers import MODEL, ScriptedBackend


async def test_health(client: httpx.AsyncClient, engine: LLMEngine) -> None:
    response = await client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}

    async def never(request):  # pragma: no cover - not called
        yield None

    app = create_app(ScriptedBackend(never, ready=False), engine.tokenizer, model_name=MODEL)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router") as other:
        response = await other.get("/health")
        pings = [await other.get("/ping"), await other.post("/ping")]  # vLLM's (SageMaker's) probe
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert response.headers["retry-after"]
    assert [(p.status_code, p.json()) for p in pings] == [(503, {"status": "unavailable"})] * 2
    for ping in (await client.get("/ping"), await client.post("/ping")):
        assert ping.status_code == 200 and ping.json() == {"status": "ok"}


async def test_cluster_lists_workers(client: httpx.AsyncClient, engine: LLMEngine) -> None:
    [worker] = (await client.get("/cluster")).json()["workers"]
    assert worker["id"] == "local" and worker["role"] == "worker"
    assert worker["kv_blocks_total"] == engine.kv_blocks_total
    assert set(worker) >= {"pid", "host", "running", "waiting", "kv_blocks_used", "draining"}


async def test_models(client: httpx.AsyncClient, backend) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["owned_by"] == "pdserve"
    assert card["max_model_len"] == backend.max_model_len
    assert isinstance(card["created"], int)


async def test_metrics_count_requests_and_tokens(client: httpx.AsyncClient) -> None:
    await client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 4, "ignore_eos": True})
    await client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 0})
    await client.get("/nowhere")
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'pdserve_router_requests_total{endpoint="/v1/completions",status="200"} 1' in lines
    assert 'pdserve_router_requests_total{endpoint="/v1/completions",status="400"} 1' in lines
    assert 'pdserve_router_requests_total{endpoint="other",status="404"} 1' in lines
    assert "pdserve_router_generated_tokens_total 4" in lines
    assert "pdserve_router_prompt_tokens_total 3" in lines
    assert "pdserve_router_requests_in_flight 1" in lines  # this very request
    assert "# TYPE pdserve_router_requests_total counter" in lines


async def test_request_id_is_honoured_echoed_and_logged(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = await client.post(
            "/v1/completions", json={"prompt": "abc", "max_tokens": 2}, headers={"X-Request-Id": "trace-42.a:b"}
        )
    assert response.headers["x-request-id"] == "trace-42.a:b"
    mine = [entry for entry in logs if entry.get("request_id") == "trace-42.a:b"]
    assert {entry["event"] for entry in mine} >= {"completion", "http request"}

    generated = await client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    request_id = generated.headers["x-request-id"]
    assert request_id != "bad id with spaces" and len(request_id) == 32


async def test_openapi_schema(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/cluster", "/metrics"} <= set(
        schema["paths"]
    )
    completion = schema["paths"]["/v1/completions"]["post"]
    assert {"200", "400", "429", "503", "504"} <= set(completion["responses"])
    request = schema["components"]["schemas"]["CompletionRequest"]
    assert request["additionalProperties"] is False


async def test_version(client: httpx.AsyncClient) -> None:
    from importlib.metadata import version

    reply = await client.get("/version")
    assert reply.status_code == 200 and reply.json() == {"version": version("pdserve")}
