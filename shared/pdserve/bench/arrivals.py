"""When each request is sent: a gamma-distributed arrival process, as in vLLM's `bench serve`.

Gaps between requests are drawn from a gamma distribution with shape `burstiness` and mean
1 / `request_rate`. Burstiness 1 is a Poisson process; below 1 requests come in bursts, above 1
they are more evenly spaced, and infinite burstiness is a fixed interval of 1 / rate. An
infinite rate sends everything at once (then `--max-concurrency` is what limits the load).

The gaps are then scaled by one common factor so that the last request is sent at exactly
(count - 1) / rate, as vLLM's `bench serve` (0.11 and later) scales its schedule to end at
count / rate: the offered load of a finite run is then the rate asked for, not the rate times
the luck of the draw (with 64 requests at 4/s the unscaled last send spreads from about 13.5 to
18.5 s over seeds, and the output throughput with it). vLLM also delays its first request by
one gap and counts the run from before it; here the first request is sent at 0.
"""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(count: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send times in seconds from the start of the run, one per request; the first is 0."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    if not request_rate > 0:
        raise ValueError(f"request_rate must be positive (or inf), got {request_rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be positive (or inf), got {burstiness}")
    if count == 0:
        return np.zeros(0)
    if math.isinf(request_rate):
        return np.zeros(count)
    if math.isinf(burstiness):
        gaps = np.full(count - 1, 1.0 / request_rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=count - 1)
        if gaps.sum() > 0:
            gaps *= (count - 1) / request_rate / gaps.sum()
    return np.concatenate([[0.0], np.cumsum(gaps)])
