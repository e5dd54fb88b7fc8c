"""Results as JSON files and as text tables for the terminal and for docs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from pdserve.bench.metrics import BenchMetrics, LatencyStats
from pdserve.bench.runner import BenchResult


def write_json(path: str | Path, payload: Any) -> Path:
    """Writes `payload` as indented JSON, creating parent folders; infinities become "inf"."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    return out


def _finite(value: Any) -> Any:
    # Strict JSON has no Infinity; the request rate is the one value that is routinely inf.
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_result(result: BenchResult) -> str:
    """The summary of one run, one figure a line."""
    m = result.metrics
    rows: list[tuple[str, str]] = [
        ("target", result.label),
        ("request rate (offered, req/s)", f"{result.load.request_rate:g}"),
        ("burstiness", f"{result.load.burstiness:g}"),
        ("max concurrency", str(result.load.max_concurrency or "unlimited")),
        ("successful requests", str(m.completed)),
        ("failed requests", str(m.failed)),
        ("duration (s)", f"{m.duration_s:.2f}"),
        ("total input tokens", str(m.total_input_tokens)),
        ("total output tokens", str(m.total_output_tokens)),
        ("request throughput (req/s)", f"{m.request_throughput:.2f}"),
        ("output token throughput (tok/s)", f"{m.output_throughput:.2f}"),
        ("total token throughput (tok/s)", f"{m.total_token_throughput:.2f}"),
        ("mean concurrency", f"{m.mean_concurrency:.2f}"),
    ]
    if m.request_goodput is not None:
        slos = " ".join(f"{k}:{v:g}" for k, v in m.slos_ms.items())
        rows.append((f"request goodput (req/s, {slos} ms)", f"{m.request_goodput:.2f}"))
        rows.append(("requests within SLOs", f"{m.good_requests}/{m.completed}"))
    for name, stats in _latencies(m):
        rows += [
            (f"{name} mean (ms)", _ms(stats.mean_ms)),
            (f"{name} p50 (ms)", _ms(stats.p50_ms)),
            (f"{name} p90 (ms)", _ms(stats.p90_ms)),
            (f"{name} p99 (ms)", _ms(stats.p99_ms)),
        ]
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    rule = "=" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule, *_failure_reasons(result)])


def _failure_reasons(result: BenchResult, shown: int = 3) -> list[str]:
    """The commonest errors of the failed requests: without them a run of failures says nothing
    of why (a wrong --model, a 401, a timeout) unless --result-file was given."""
    counts = Counter(t.error for t in result.timelines if t.error)
    if not counts:
        return []
    lines = [f"failures, commonest first ({len(counts)} distinct):"]
    lines += [f"  {n} x {error[:300]}" for error, n in counts.most_common(shown)]
    return lines


def _latencies(m: BenchMetrics) -> list[tuple[str, LatencyStats]]:
    return [("TTFT", m.ttft), ("TPOT", m.tpot), ("ITL", m.itl), ("E2E", m.e2e)]


def sweep_table(results: list[BenchResult]) -> str:
    """One Markdown row per (target, rate): throughputs, goodput and latency percentiles."""
    header = [
        "target", "rate", "ok", "failed", "req/s", "out tok/s", "goodput req/s",
        "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "E2E p50", "E2E p99",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        m = r.metrics
        goodput = "-" if m.request_goodput is None else f"{m.request_goodput:.2f}"
        cells = [
            r.label, f"{r.load.request_rate:g}", str(m.completed), str(m.failed),
            f"{m.request_throughput:.2f}", f"{m.output_throughput:.1f}", goodput,
            _ms(m.ttft.p50_ms), _ms(m.ttft.p99_ms), _ms(m.tpot.p50_ms), _ms(m.tpot.p99_ms),
            _ms(m.itl.p50_ms), _ms(m.itl.p99_ms), _ms(m.e2e.p50_ms), _ms(m.e2e.p99_ms),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(latencies in ms)\n"
