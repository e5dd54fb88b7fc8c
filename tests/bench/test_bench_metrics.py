"""Metric definitions on hand-built timelines, against values worked out by hand.

Three completed requests and one failure over a 4 s run:
  A: sent at 0.0, chunks at 0.1, 0.15, 0.25, 0.3, 4 output tokens, 10 prompt tokens
  B: sent at 1.0, chunks at 1.2, 1.6 (the second carries 2 tokens), 3 output tokens, 20 prompt tokens
  C: sent at 2.0, one chunk at 2.05, 1 output token, 30 prompt tokens
  D: failed with HTTP 503, 40 prompt tokens
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pdserve.bench.metrics import LatencyStats, RequestTimeline, compute_metrics, meets_slos, parse_goodput

DURATION_S = 4.0


def timelines() -> list[RequestTimeline]:
    return [
        RequestTimeline(0.0, [0.1, 0.15, 0.25, 0.3], prompt_tokens=10, output_tokens=4),
        RequestTimeline(1.0, [1.2, 1.6], prompt_tokens=20, output_tokens=3),
        RequestTimeline(2.0, [2.05], prompt_tokens=30, output_tokens=1),
        RequestTimeline(3.0, [], prompt_tokens=40, error="HTTP 503: no capacity"),
    ]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def test_per_request_definitions() -> None:
    a, b, c, d = timelines()
    assert a.ttft_s == approx(0.1)
    assert a.e2e_s == approx(0.3)
    assert a.tpot_s == approx((0.3 - 0.1) / 3)  # (E2E - TTFT) / (output tokens - 1)
    assert a.itl_s == [approx(0.05), approx(0.1), approx(0.05)]
    # B's last chunk carried two tokens: TPOT divides by tokens, ITL is per chunk gap.
    assert b.tpot_s == approx(0.4 / 2)
    assert b.itl_s == [approx(0.4)]
    assert c.tpot_s is None and c.itl_s == []
    assert c.ttft_s == approx(0.05) and c.e2e_s == approx(0.05)
    assert not d.ok and a.ok


def test_counts_and_throughputs() -> None:
    m = compute_metrics(timelines(), DURATION_S)
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_input_tokens == 60  # failed requests count nowhere but in `failed`
    assert m.total_output_tokens == 8
    assert m.request_throughput == approx(3 / 4)
    assert m.output_throughput == approx(8 / 4)
    assert m.total_token_throughput == approx(68 / 4)
    assert m.mean_concurrency == approx((0.3 + 0.6 + 0.05) / 4)
    assert m.good_requests is None and m.request_goodput is None


def test_latency_percentiles_interpolate_linearly() -> None:
    m = compute_metrics(timelines(), DURATION_S)
    # TTFT [100, 200, 50] ms -> sorted [50, 100, 200]; rank p/100 * (n - 1), linear between ranks.
    assert m.ttft == LatencyStats(3, approx(350 / 3), approx(100), approx(180), approx(198), approx(200))
    # TPOT [66.67, 200] ms; C has one output token and no TPOT.
    tpot_a = 200 / 3
    assert m.tpot.count == 2
    assert m.tpot.mean_ms == approx((tpot_a + 200) / 2)
    assert m.tpot.p50_ms == approx((tpot_a + 200) / 2)
    assert m.tpot.p90_ms == approx(tpot_a + 0.9 * (200 - tpot_a))
    assert m.tpot.p99_ms == approx(tpot_a + 0.99 * (200 - tpot_a))
    # ITL pools every gap of every request: [50, 100, 50, 400] -> sorted [50, 50, 100, 400].
    assert m.itl == LatencyStats(4, approx(150), approx(75), approx(310), approx(391), approx(400))
    # E2E [300, 600, 50] -> sorted [50, 300, 600].
    assert m.e2e == LatencyStats(3, approx(950 / 3), approx(300), approx(540), approx(594), approx(600))


def test_percentiles_match_numpy_default() -> None:
    rng = np.random.default_rng(3)
    samples = list(rng.exponential(0.2, size=101))
    stats = LatencyStats.of(samples)
    expected = np.percentile(np.asarray(samples) * 1000, [50, 90, 99])
    assert [stats.p50_ms, stats.p90_ms, stats.p99_ms] == [approx(float(v)) for v in expected]


def test_goodput_counts_requests_within_every_slo() -> None:
    # A: TTFT 100, TPOT 66.7 -> good. B: TTFT 200 -> not. C: TTFT 50, one token (TPOT 0) -> good.
    m = compute_metrics(timelines(), DURATION_S, parse_goodput(["ttft:150", "tpot:100"]))
    assert m.good_requests == 2
    assert m.request_goodput == approx(2 / 4)
    assert m.slos_ms == {"ttft": 150.0, "tpot": 100.0}
    # E2E within 100 ms: only C. vLLM's spelling e2el is accepted.
    m = compute_metrics(timelines(), DURATION_S, parse_goodput(["e2el:100"]))
    assert m.good_requests == 1
    # An SLO is inclusive: exactly at the limit is good.
    assert meets_slos(timelines()[0], {"ttft": 100.0})


def test_no_completed_requests() -> None:
    m = compute_metrics([RequestTimeline(0.0, error="timeout")], 1.0)
    assert (m.completed, m.failed, m.request_throughput) == (0, 1, 0.0)
    assert m.ttft == LatencyStats(0, None, None, None, None, None)


@pytest.mark.parametrize("bad", ["ttft", "ttft:abc", "speed:5", "tpot:-1", "ttft:0"])
def test_bad_goodput_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="goodput SLO"):
        parse_goodput([bad])
