"""Latency histograms in Prometheus' text format: time to first token, between tokens, whole request.

Measured at the router per choice, from when its request is sent to the workers (after parsing
and tokenizing, as vLLM measures from arrival at its engine) to when each delta is handed to the
response. Cumulative buckets as Prometheus expects, so `histogram_quantile` gives p50/p99 across
routers; observing costs a bisect and two additions on the event loop, no lock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds in seconds. Token gaps start at a millisecond (a small model on a CPU) and first
# tokens and whole requests reach minutes (long prompts queued behind others).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(slots=True)
class LatencyHistogram:
    name: str  # full metric name, without the _bucket / _sum / _count suffixes
    help: str
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def render(self, name: str | None = None, labels: str = "") -> list[str]:
        """The text format lines; `name` and `labels` ('key="value"', escaped) render the same
        counts under another name (vllm_metrics.py)."""
        name = name or self.name
        sep = "," if labels else ""
        lines = [f"# HELP {name} {self.help}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
        suffix = f"{{{labels}}}" if labels else ""
        lines += [f"{name}_sum{suffix} {self.total!r}", f"{name}_count{suffix} {self.count}"]
        return lines
