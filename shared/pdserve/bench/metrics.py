"""Serving metrics over recorded request timelines, defined as vLLM's `bench serve` defines them.

- TTFT: from sending the request to the first streamed chunk that carries output.
- E2E: from sending the request to the last chunk that carries output.
- TPOT: per request, (E2E - TTFT) / (output tokens - 1); requests with one output token have none.
- ITL: every gap between consecutive output chunks, of every request, pooled.
- Percentiles interpolate linearly between ranks (numpy's default, as vLLM reports them).
- Throughputs divide by the run's wall time; goodput counts only requests that meet every SLO.

aiperf names the same quantities differently: its "inter token latency" is TPOT here and its
"inter chunk latency" is ITL here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2e")


@dataclass(slots=True)
class RequestTimeline:
    """What the client saw of one request. Times are seconds on one monotonic clock."""

    start_s: float
    chunk_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_s)

    @property
    def ttft_s(self) -> float:
        return self.chunk_s[0] - self.start_s

    @property
    def e2e_s(self) -> float:
        return self.chunk_s[-1] - self.start_s

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_s, self.chunk_s[1:], strict=False)]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of one latency in milliseconds; all None when nothing was measured."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        if not seconds:
            return cls(0, None, None, None, None, None)
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
        return cls(len(ms), float(ms.mean()), p50, p90, p99, float(ms.max()))


@dataclass(frozen=True, slots=True)
class BenchMetrics:
    """One run's results. Throughputs are per second of `duration_s`; goodput fields are None
    when no SLO was given."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    mean_concurrency: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    slos_ms: dict[str, float]
    good_requests: int | None
    request_goodput: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """['ttft:500', 'tpot:50'] -> {'ttft': 500.0, 'tpot': 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        name = "e2e" if name == "e2el" else name  # vLLM spells it e2el
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad goodput SLO {item!r}; expected NAME:MS with NAME one of {', '.join(SLO_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"bad goodput SLO {item!r}: {value!r} is not a number of milliseconds") from None
        if ms <= 0 or not math.isfinite(ms):
            raise ValueError(f"bad goodput SLO {item!r}: must be a positive number of milliseconds")
        if name in slos:
            raise ValueError(f"goodput SLO {name} given twice ({slos[name]:g} and {ms:g} ms); give it once")
        slos[name] = ms
    return slos


def meets_slos(timeline: RequestTimeline, slos_ms: dict[str, float]) -> bool:
    """Whether a completed request is within every SLO. A request with one output token has a
    TPOT of 0 here, as in vLLM: it cannot have been slow between tokens."""
    observed_s = {"ttft": timeline.ttft_s, "tpot": timeline.tpot_s or 0.0, "e2e": timeline.e2e_s}
    return all(observed_s[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def compute_metrics(
    timelines: list[RequestTimeline], duration_s: float, slos_ms: dict[str, float] | None = None
) -> BenchMetrics:
    """Metrics of a run that took `duration_s` seconds of wall time. Failed requests count only
    in `failed`; every latency and throughput is over the completed ones."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    done = [t for t in timelines if t.ok]
    tpots = [t.tpot_s for t in done if t.tpot_s is not None]
    total_in = sum(t.prompt_tokens for t in done)
    total_out = sum(t.output_tokens for t in done)
    good = sum(meets_slos(t, slos_ms) for t in done) if slos_ms else None
    return BenchMetrics(
        completed=len(done),
        failed=len(timelines) - len(done),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(done) / duration_s,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        mean_concurrency=sum(t.e2e_s for t in done) / duration_s,
        ttft=LatencyStats.of([t.ttft_s for t in done]),
        tpot=LatencyStats.of(tpots),
        itl=LatencyStats.of([gap for t in done for gap in t.itl_s]),
        e2e=LatencyStats.of([t.e2e_s for t in done]),
        slos_ms=dict(slos_ms or {}),
        good_requests=good,
        request_goodput=None if good is None else good / duration_s,
    )
