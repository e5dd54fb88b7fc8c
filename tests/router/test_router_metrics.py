"""/metrics as Prometheus reads it: latency histograms per choice and the workers' load."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from router_helpers import MODEL


async def scrape(client: httpx.AsyncClient) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name -> (sample name, sorted labels) -> value, parsed by Prometheus' own parser."""
    text = (await client.get("/metrics")).text
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def histogram(families: dict, name: str) -> tuple[float, float, list[float]]:
    """(count, sum, cumulative bucket counts in bound order) of one histogram."""
    samples = families[name]
    count = samples[(f"{name}_count", ())]
    total = samples[(f"{name}_sum", ())]
    buckets = sorted(
        (float(dict(labels)["le"]), value) for (sample, labels), value in samples.items() if sample.endswith("_bucket")
    )
    assert buckets[-1][0] == float("inf") and buckets[-1][1] == count
    values = [value for _, value in buckets]
    assert values == sorted(values), "buckets must be cumulative"
    return count, total, values


async def test_latency_histograms_time_every_choice(client: httpx.AsyncClient) -> None:
    def grown(after: dict, before: dict, name: str) -> tuple[float, float]:
        count, total, _ = histogram(after, name)
        count0, total0, _ = histogram(before, name)
        return count - count0, total - total0

    ttft_name = "pdserve_router_time_to_first_token_seconds"
    itl_name = "pdserve_router_inter_token_latency_seconds"
    e2e_name = "pdserve_router_e2e_request_latency_seconds"
    before = await scrape(client)
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 6, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    streamed = await scrape(client)
    # One gap per streamed chunk after the first (each delta of new tokens is one chunk).
    assert grown(streamed, before, itl_name)[0] == len(events) - 1 >= 0
    assert grown(streamed, before, ttft_name)[0] == grown(streamed, before, e2e_name)[0] == 1

    await client.post("/v1/completions", json={**body, "stream": False, "n": 2})  # two more choices
    after = await scrape(client)
    ttft, ttft_seconds = grown(after, before, ttft_name)
    itl, itl_seconds = grown(after, before, itl_name)
    e2e, e2e_seconds = grown(after, before, e2e_name)
    assert ttft == 3 and e2e == 3  # one per choice: 1 streamed, 2 of the n=2 request
    # Each choice gets 6 tokens in 1 to 6 deltas: at most 5 gaps each.
    assert len(events) - 1 <= itl <= 3 * 5
    assert 0 < ttft_seconds < e2e_seconds < 60 and itl_seconds >= 0


async def test_worker_gauges(client: httpx.AsyncClient) -> None:
    families = await scrape(client)
    totals = families["pdserve_worker_kv_blocks_total"]
    workers = {dict(labels)["worker"]: value for (_, labels), value in totals.items()}
    assert len(workers) == 1 and next(iter(workers.values())) > 0
    assert families["pdserve_workers_live"] == {("pdserve_workers_live", (("role", "worker"),)): 1.0}
    for name in ("running", "waiting", "kv_blocks_used", "draining"):
        assert list(families[f"pdserve_worker_{name}"].values()) == [0.0], name  # an idle worker


async def test_vllm_named_series_carry_the_same_figures(client: httpx.AsyncClient) -> None:
    """Dashboards and autoscalers written for vLLM read the same figures under vLLM's names."""
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True, "n": 2}
    before = await scrape(client)
    assert (await client.post("/v1/completions", json=body)).status_code == 200
    after = await scrape(client)
    model = (("model_name", MODEL),)

    def value(families: dict, family: str, sample: str, labels: tuple = model) -> float:
        return families[family].get((sample, labels), 0.0)

    finished = (("finished_reason", "length"), ("model_name", MODEL))
    grew = value(after, "vllm:request_success", "vllm:request_success_total", finished) - value(
        before, "vllm:request_success", "vllm:request_success_total", finished
    )
    assert grew == 2  # two choices, both ended by max_tokens
    assert value(after, "vllm:generation_tokens", "vllm:generation_tokens_total") == value(
        after, "pdserve_router_generated_tokens", "pdserve_router_generated_tokens_total", ()
    )
    assert value(after, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == value(
        after, "pdserve_router_prompt_tokens", "pdserve_router_prompt_tokens_total", ()
    )
    for ours, theirs in (
        ("pdserve_router_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
        ("pdserve_router_inter_token_latency_seconds", "vllm:inter_token_latency_seconds"),
        ("pdserve_router_e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds"),
    ):
        count = after[theirs][(f"{theirs}_count", model)]
        assert count == histogram(after, ours)[0] > 0
    used = sum(v for (s, _), v in after["pdserve_worker_kv_blocks_used"].items())
    total = sum(v for (s, _), v in after["pdserve_worker_kv_blocks_total"].items())
    assert value(after, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") == used / total
    assert value(after, "vllm:num_requests_waiting", "vllm:num_requests_waiting") == sum(
        after["pdserve_worker_waiting"].values()
    )
