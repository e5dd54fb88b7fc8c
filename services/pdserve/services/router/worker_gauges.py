"""The live workers' load as Prometheus gauges, from their heartbeats (what /cluster shows as JSON).

One series per worker and quantity, labelled by worker id and role, so a dashboard sees queueing
and KV pressure per worker and per role (sum by role) without scraping every worker. A worker
that stops beating drops out of the view, and so out of the next scrape.
"""

from __future__ import annotations

from collections import Counter

from pdserve.serving.backend import WorkerInfo

GAUGES = (
    ("running", "Sequences the worker's engine is running."),
    ("waiting", "Sequences queued in the worker's engine."),
    ("kv_blocks_used", "KV cache blocks in use on the worker."),
    ("kv_blocks_total", "KV cache blocks of the worker's pool."),
    ("draining", "1 while the worker drains (takes no new work), else 0."),
)


def render_worker_gauges(workers: list[WorkerInfo]) -> str:
    lines: list[str] = []
    for name, help_text in GAUGES:
        metric = f"pdserve_worker_{name}"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for w in sorted(workers, key=lambda w: w.id):
            lines.append(
                f'{metric}{{worker="{label_value(w.id)}",role="{label_value(w.role)}"}} {int(getattr(w, name))}'
            )
    lines += ["# HELP pdserve_workers_live Live workers by role.", "# TYPE pdserve_workers_live gauge"]
    for role, count in sorted(Counter(w.role for w in workers).items()):
        lines.append(f'pdserve_workers_live{{role="{label_value(role)}"}} {count}')
    return "\n".join(lines) + "\n"


def label_value(value: str) -> str:
    """A label value as the text format requires: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
