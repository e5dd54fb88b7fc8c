"""PNG plots of benchmark results (matplotlib, headless).

- `plot_latency_cdfs`: TTFT, TPOT, ITL and E2E distributions, one line per run, so targets
  measured at the same rate sit side by side on the same axes.
- `plot_rate_curves`: throughput, goodput and latency percentiles against the offered request
  rate, one line per target.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdserve.bench.metrics import BenchMetrics, RequestTimeline
from pdserve.bench.runner import BenchResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CDF_PANELS: list[tuple[str, Callable[[list[RequestTimeline]], list[float]]]] = [
    ("TTFT", lambda ts: [t.ttft_s for t in ts]),
    ("TPOT", lambda ts: [v for t in ts if (v := t.tpot_s) is not None]),
    ("ITL", lambda ts: [gap for t in ts for gap in t.itl_s]),
    ("E2E", lambda ts: [t.e2e_s for t in ts]),
]


def _pyplot() -> Any:
    # Imported late and with the Agg backend: plotting must work without a display, and a run
    # without --plot-dir should not pay for importing matplotlib.
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'pdserve[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdfs(results: list[BenchResult], path: str | Path, title: str = "") -> Path:
    """Empirical CDFs of the four latencies (ms), one line per result, labelled by its label."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (name, values_of) in zip(axes.flat, CDF_PANELS, strict=True):
        for result in results:
            values = np.sort(np.asarray(values_of([t for t in result.timelines if t.ok])) * 1000.0)
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=result.label)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or "latency CDFs")
    return _save(fig, path)


RATE_PANELS: list[tuple[str, Callable[[BenchMetrics], float | None]]] = [
    ("output tokens/s", lambda m: m.output_throughput),
    ("requests/s", lambda m: m.request_throughput),
    ("goodput (requests/s within SLOs)", lambda m: m.request_goodput),
    ("TTFT p99 (ms)", lambda m: m.ttft.p99_ms),
    ("TPOT p50 (ms)", lambda m: m.tpot.p50_ms),
    ("TPOT p99 (ms)", lambda m: m.tpot.p99_ms),
]


def plot_rate_curves(results: list[BenchResult], path: str | Path, title: str = "") -> Path:
    """Each metric of `RATE_PANELS` against the offered rate, one line per target label. Rates
    are evenly spaced categories so that an unlimited rate ("inf") has a place on the axis."""
    plt = _pyplot()
    rates = sorted({r.load.request_rate for r in results})
    labels = list(dict.fromkeys(r.label for r in results))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (name, metric) in zip(axes.flat, RATE_PANELS, strict=True):
        for label in labels:
            points = [(rates.index(r.load.request_rate), metric(r.metrics)) for r in results if r.label == label]
            xs = [x for x, y in points if y is not None]
            ys = [y for _, y in points if y is not None]
            if ys:
                ax.plot(xs, ys, marker="o", label=label)
        _rate_axis(ax, rates)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no SLO given (--goodput)", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "throughput and latency against request rate")
    return _save(fig, path)


def _rate_axis(ax: Axes, rates: list[float]) -> None:
    ax.set_xticks(range(len(rates)))
    ax.set_xticklabels([f"{r:g}" for r in rates])
    ax.set_xlabel("offered request rate (req/s)")


def _save(fig: object, path: str | Path) -> Path:
    plt = _pyplot()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(out, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)
    return out
