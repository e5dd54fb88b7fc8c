"""`pdserve bench`: a load generator and latency metrics for any OpenAI-compatible endpoint.

`datasets` makes the requests, `arrivals` decides when each is sent, `client` streams them and
records a timeline per request, `metrics` turns timelines into numbers, `report` and `plots`
write them out, `runner` ties one run together and `sweep` runs many against clusters it starts.
"""

from pdserve.bench.datasets import BenchRequest
from pdserve.bench.metrics import BenchMetrics, RequestTimeline, compute_metrics

__all__ = ["BenchMetrics", "BenchRequest", "RequestTimeline", "compute_metrics"]
