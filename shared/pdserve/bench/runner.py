"""One benchmark run: warm-up, then every request sent on its arrival schedule, then metrics."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from pdserve.bench.arrivals import arrival_offsets
from pdserve.bench.client import Endpoint, new_http_client, send_request
from pdserve.bench.datasets import BenchRequest, DatasetSpec
from pdserve.bench.metrics import BenchMetrics, RequestTimeline, compute_metrics
from pdserve.gc_heap import frozen_heap

ERRORS_KEPT = 5


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How requests are offered: `request_rate` per second (inf: all at once) with gamma
    `burstiness`, at most `max_concurrency` in flight (None: no limit)."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_warmups: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.num_warmups < 0:
            raise ValueError(f"num_warmups must be non-negative, got {self.num_warmups}")


@dataclass(slots=True)
class BenchResult:
    """A finished run: what was asked, what each request saw, and the metrics."""

    label: str
    endpoint: Endpoint
    dataset: DatasetSpec
    load: LoadSpec
    timelines: list[RequestTimeline]
    metrics: BenchMetrics

    def to_dict(self, detailed: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {
            "label": self.label,
            "base_url": self.endpoint.base_url,
            "endpoint": self.endpoint.path,
            "model": self.endpoint.model,
            "ignore_eos": self.endpoint.ignore_eos,
            "extra_body": self.endpoint.extra_body,
            "dataset": asdict(self.dataset),
            "load": asdict(self.load),
            "metrics": self.metrics.to_dict(),
            "errors": [t.error for t in self.timelines if t.error][:ERRORS_KEPT],
        }
        if detailed:
            result["requests"] = [_request_record(t) for t in self.timelines]
        return result


def _request_record(t: RequestTimeline) -> dict[str, Any]:
    if not t.ok:
        return {"error": t.error, "prompt_tokens": t.prompt_tokens}
    tpot = t.tpot_s
    return {
        "prompt_tokens": t.prompt_tokens,
        "output_tokens": t.output_tokens,
        "ttft_ms": t.ttft_s * 1000.0,
        "tpot_ms": None if tpot is None else tpot * 1000.0,
        "e2e_ms": t.e2e_s * 1000.0,
        "itl_ms": [gap * 1000.0 for gap in t.itl_s],
    }


async def offer_load(
    endpoint: Endpoint,
    requests: list[BenchRequest],
    load: LoadSpec,
    *,
    timeout_s: float = 600.0,
    progress: str | None = None,
) -> tuple[list[RequestTimeline], float]:
    """Sends `requests` on `load`'s schedule; returns their timelines (in order) and the run's
    wall time in seconds, from the first send to the last response."""
    offsets = arrival_offsets(len(requests), load.request_rate, load.burstiness, load.seed)
    limit = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    bar = tqdm(total=len(requests), desc=progress, unit="req", disable=progress is None)
    async with new_http_client(timeout_s) as client:
        start = time.perf_counter()

        async def one(request: BenchRequest, offset: float) -> RequestTimeline:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if limit is None:
                timeline = await send_request(client, endpoint, request)
            else:
                async with limit:
                    timeline = await send_request(client, endpoint, request)
            bar.update(1)
            return timeline

        timelines = await asyncio.gather(*(one(r, float(o)) for r, o in zip(requests, offsets, strict=True)))
        duration = time.perf_counter() - start
    bar.close()
    return list(timelines), duration


async def benchmark(
    label: str,
    endpoint: Endpoint,
    dataset: DatasetSpec,
    requests: list[BenchRequest],
    load: LoadSpec,
    *,
    slos_ms: dict[str, float] | None = None,
    warmup_requests: list[BenchRequest] | None = None,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> BenchResult:
    """Warm-up (all at once, within `max_concurrency`, not measured), then the measured run."""
    if warmup_requests:
        warm = LoadSpec(max_concurrency=load.max_concurrency)
        desc = f"{label} warm-up" if progress else None
        await offer_load(endpoint, warmup_requests, warm, timeout_s=timeout_s, progress=desc)
    # This process's own full GC passes would be timed as server latency (gc_heap.py).
    with frozen_heap():
        timelines, duration = await offer_load(
            endpoint, requests, load, timeout_s=timeout_s, progress=label if progress else None
        )
    metrics = compute_metrics(timelines, duration, slos_ms)
    return BenchResult(label, endpoint, dataset, load, timelines, metrics)
