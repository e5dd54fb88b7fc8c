"""The router-overhead benchmark (ops/bench_router_overhead.py) decides whether issue 5's latency
target is met, so its mechanics are tested: the paths take turns in a varying order with the
warm-up left out, `--awake-cores` really runs idle-priority busy loops one per core and stops
them, and a short real run (nats-server, `pdserve router`, `pdserve worker`, the local router)
reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops"))

import bench_router_overhead as bench  # noqa: E402


async def test_paths_take_turns_in_varying_order_without_warmup() -> None:
    calls: list[str] = []

    def path(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            calls.append(name)

        return run

    times = await bench.take_turns({"a": path("a"), "b": path("b"), "c": path("c")}, reps=30, warmup=2, seed=1)
    assert {name: len(ms) for name, ms in times.items()} == {"a": 30, "b": 30, "c": 30}
    assert all(ms >= 0 for series in times.values() for ms in series)
    rounds = [tuple(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert len(rounds) == 32 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len(set(rounds)) > 1, "the same order every repetition favours one path"


def test_paired_differences_summary() -> None:
    figures = bench.summary({"x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert figures == {"x": {"p50_ms": 3.0, "p90_ms": 4.6}}


def test_awake_cores_spinners_run_at_idle_priority_one_per_core() -> None:
    procs = bench.Processes()
    try:
        bench.start_idle_spinners(procs)
        spinners = list(procs.procs.values())
        cores = sorted(os.sched_getaffinity(0))
        assert len(spinners) == len(cores)
        deadline = time.monotonic() + 30
        while any(os.sched_getscheduler(p.pid) != os.SCHED_IDLE for p in spinners):
            assert time.monotonic() < deadline, "a spinner never switched to SCHED_IDLE"
            assert all(p.poll() is None for p in spinners), "a spinner exited"
            time.sleep(0.05)
        if len(spinners) > 1:
            assert [os.sched_getaffinity(p.pid) for p in spinners] == [{core} for core in cores]
    finally:
        procs.stop()
    assert all(p.returncode is not None for p in procs.procs.values())


@pytest.mark.e2e
def test_short_latency_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "ops/bench_router_overhead.py", "latency", "--reps", "3", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for run in ("max_tokens=1", "max_tokens=16"):
        figures = result[run]
        assert set(figures) == {"a", "b", "c", "c-a", "b-c", "b-a"}
        for path in ("a", "b", "c"):
            assert 0 < figures[path]["p50_ms"] <= figures[path]["p90_ms"]
    # Sixteen streamed tokens take longer than one on every path.
    one, sixteen = result["max_tokens=1"], result["max_tokens=16"]
    assert all(sixteen[path]["p50_ms"] > one[path]["p50_ms"] for path in ("a", "b", "c"))
    assert result["awake_cores"] is False
    assert isinstance(result["per_token_overhead_ms"], float)
