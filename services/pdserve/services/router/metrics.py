"""The router's counters, rendered in Prometheus' text exposition format at GET /metrics.

Plain integers updated on the event loop (one thread), so no locks. Labels are bounded: the
endpoint is one of the app's routes or "other", the status an HTTP status.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pdserve.services.router.latency_histogram import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS, LatencyHistogram

KNOWN_ENDPOINTS = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ping", "/cluster", "/metrics", "/version"}
)


@dataclass(slots=True)
class RouterMetrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (endpoint, status) -> count
    in_flight: int = 0
    generations_in_flight: int = 0  # admitted completion and chat requests (admission.py)
    admission_refusals: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    client_disconnects: int = 0
    finished_choices: Counter[str] = field(default_factory=Counter)  # finish reason -> choices
    time_to_first_token: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(
            "pdserve_router_time_to_first_token_seconds",
            "Seconds from sending a choice to the workers to its first token.",
            TTFT_BUCKETS,
        )
    )
    inter_token_latency: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(
            "pdserve_router_inter_token_latency_seconds",
            "Seconds between a choice's consecutive deltas (each streamed chunk).",
            ITL_BUCKETS,
        )
    )
    e2e_request_latency: LatencyHistogram = field(
        default_factory=lambda: LatencyHistogram(
            "pdserve_router_e2e_request_latency_seconds",
            "Seconds from sending a choice to the workers to its last token, for choices that finished.",
            E2E_BUCKETS,
        )
    )

    def observe_request(self, path: str, status: int) -> None:
        endpoint = path if path in KNOWN_ENDPOINTS else "other"
        self.requests[(endpoint, status)] += 1

    def render(self) -> str:
        lines = [
            "# HELP pdserve_router_requests_total HTTP requests answered, by endpoint and status.",
            "# TYPE pdserve_router_requests_total counter",
        ]
        for (endpoint, status), count in sorted(self.requests.items()):
            lines.append(f'pdserve_router_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
        for name, kind, help_text, value in (
            ("requests_in_flight", "gauge", "HTTP requests being served now.", self.in_flight),
            (
                "generations_in_flight",
                "gauge",
                "Completion and chat requests admitted and not yet answered.",
                self.generations_in_flight,
            ),
            (
                "admission_refusals_total",
                "counter",
                "Requests refused with 429 because the router was at --max-inflight.",
                self.admission_refusals,
            ),
            ("prompt_tokens_total", "counter", "Prompt tokens sent to workers (each prompt once).", self.prompt_tokens),
            ("generated_tokens_total", "counter", "Tokens generated and received from workers.", self.generated_tokens),
            (
                "client_disconnects_total",
                "counter",
                "Requests cancelled because the client went away.",
                self.client_disconnects,
            ),
        ):
            lines += [
                f"# HELP pdserve_router_{name} {help_text}",
                f"# TYPE pdserve_router_{name} {kind}",
                f"pdserve_router_{name} {value}",
            ]
        for histogram in (self.time_to_first_token, self.inter_token_latency, self.e2e_request_latency):
            lines += histogram.render()
        return "\n".join(lines) + "\n"
