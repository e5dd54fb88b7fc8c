"""The arrival process: gamma gaps with mean 1/rate and a coefficient of variation of
1/sqrt(burstiness); infinite rate or burstiness are the degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pdserve.bench.arrivals import arrival_offsets

COUNT = 20_001


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_have_the_rate_and_the_spread_asked_for(burstiness: float) -> None:
    offsets = arrival_offsets(COUNT, request_rate=10.0, burstiness=burstiness, seed=7)
    assert offsets[0] == 0.0
    gaps = np.diff(offsets)
    assert (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_a_finite_run_offers_exactly_the_rate(seed: int) -> None:
    # The schedule is scaled to end at (count - 1) / rate, as vLLM scales its own to end at
    # count / rate; the gaps stay random.
    offsets = arrival_offsets(64, request_rate=4.0, burstiness=1.0, seed=seed)
    assert offsets[0] == 0.0
    assert offsets[-1] == pytest.approx(63 / 4.0)
    assert np.diff(offsets).std() > 0.1


def test_poisson_counts_per_window_are_poisson() -> None:
    # Burstiness 1 is a Poisson process: arrivals per second have mean = variance = rate.
    offsets = arrival_offsets(COUNT, request_rate=5.0, burstiness=1.0, seed=1)
    counts = np.bincount(offsets.astype(int))[:-1]  # drop the last, partial second
    assert counts.mean() == pytest.approx(5.0, rel=0.05)
    assert counts.var() == pytest.approx(5.0, rel=0.1)


def test_same_seed_same_schedule() -> None:
    a = arrival_offsets(50, 4.0, 0.5, seed=3)
    assert np.array_equal(a, arrival_offsets(50, 4.0, 0.5, seed=3))
    assert not np.array_equal(a, arrival_offsets(50, 4.0, 0.5, seed=4))


def test_degenerate_cases() -> None:
    assert np.array_equal(arrival_offsets(5, math.inf), np.zeros(5))
    assert np.allclose(arrival_offsets(5, 4.0, burstiness=math.inf), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert arrival_offsets(0, 1.0).size == 0
    assert arrival_offsets(1, 1.0).tolist() == [0.0]


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (math.nan, 1.0)])
def test_bad_parameters_are_refused(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(3, rate, burstiness)
