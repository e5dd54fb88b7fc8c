"""Where one request's time goes, stage by stage, across client, router, nats-server and worker.

    python ops/bench_stage_trace.py [--requests 300] [--gap-ms 5] [--keep DIR]

Builds a copy of this checkout with ops/stage_trace.patch applied (timestamps at each hand-off:
HTTP in, body read, validated, tokenized, task published, message read by nats-py in the worker,
task admitted, engine step, chunk published, read back in the router, response written), starts
nats-server, `pdserve worker` and `pdserve router` from that copy, sends one-token streaming
completions one at a time (as `bench_router_overhead.py latency` path b does), and prints the
median and p90 of every gap between consecutive stages. pdserve itself carries no tracing: the
copy does, so what is measured here costs the real services nothing.

The monotonic clock is shared by every process on a machine, so the gaps that cross processes
(R_pub -> W_msg: the task through nats-server; W_pub -> R_msg: the chunk back) are wake-ups plus
the client library's reading, and the others are one process's own work.
The patch is applied with one line of context (`git apply -C1`), so it survives most changes
near its timestamps. When it no longer applies (tests/ops/test_stage_trace_bench.py says so),
refresh it: apply it by hand to a worktree of the current code, then
`git add -N shared/pdserve/_trace.py && git diff > ops/stage_trace.patch` there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import router_bench_roles as roles
from bench_router_overhead import Processes, cluster_pair, start_nats, wait_healthy
from pdserve.services.local_broker import free_port

REPO = Path(__file__).resolve().parent.parent
PATCH = REPO / "ops" / "stage_trace.patch"
BODY = {"model": "pdserve-tiny", "prompt": "hello world", "max_tokens": 1, "temperature": 0, "ignore_eos": True,
        "stream": True}  # fmt: skip


def build_traced_copy(workdir: Path) -> Path:
    """This checkout's tracked files with the patch applied, installed into workdir/site."""
    source = workdir / "src"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    # Uncommitted changes count too: the trace is of the code as it is now.
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], check=True, capture_output=True).stdout
    if diff:
        subprocess.run(["git", "apply"], cwd=source, input=diff, check=True)
    applied = subprocess.run(["git", "apply", "-C1", str(PATCH)], cwd=source, capture_output=True, text=True)
    if applied.returncode != 0:
        raise SystemExit(f"ops/stage_trace.patch does not apply to this code:\n{applied.stderr}\nupdate the patch")
    site = workdir / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(source)]
    subprocess.run(pip, check=True, capture_output=True)
    return site


async def run(args: argparse.Namespace, site: Path, trace: Path) -> None:
    procs = Processes()
    fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(stage: str) -> None:
        os.write(fd, f"{stage} {time.monotonic_ns()}\n".encode())

    try:
        nats_url, port = start_nats(procs), free_port()
        worker, router = cluster_pair(nats_url, f"trace{uuid.uuid4().hex[:6]}", port)
        env = {"PYTHONPATH": str(site), "PDSERVE_TRACE": str(trace)}
        procs.start("worker", worker, {**env, "PDSERVE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"})
        procs.start("router", router, env)
        await wait_healthy(port)
        conn = await roles.HttpConnection.open("127.0.0.1", port)
        for _ in range(args.warmup):
            await conn.post_stream("/v1/completions", BODY)
        mark("MARK")
        for i in range(args.requests):
            await asyncio.sleep(args.gap_ms / 1e3)
            mark("C0")
            await conn.post_stream("/v1/completions", BODY)
            mark("C1")
            if (i + 1) % 100 == 0:
                print(f"{i + 1}/{args.requests} requests", file=sys.stderr)
        conn.close()
    finally:
        os.close(fd)
        procs.stop()


def analyse(trace: Path) -> dict[str, object]:
    """Requests whose stages came in the most common order; per gap between consecutive stages,
    the median and p90 in microseconds."""
    lines = [line.split() for line in trace.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line[0] == "MARK")
    requests: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] | None = None
    for stage, ns in lines[start + 1 :]:
        if stage == "C0":
            current = []
        if current is not None:
            current.append((stage, int(ns)))
            if stage == "C1":
                requests.append(current)
                current = None
    orders = Counter(tuple(stage for stage, _ in request) for request in requests)
    order = orders.most_common(1)[0][0]
    chosen = [r for r in requests if tuple(stage for stage, _ in r) == order]
    gaps = {}
    for k in range(1, len(order)):
        values = [(r[k][1] - r[k - 1][1]) / 1e3 for r in chosen]
        gaps[f"{order[k - 1]} -> {order[k]}"] = {
            "p50_us": round(statistics.median(values), 1),
            "p90_us": round(statistics.quantiles(values, n=10)[-1], 1),
        }
    total = [(r[-1][1] - r[0][1]) / 1e3 for r in chosen]
    return {
        "requests": len(requests),
        "in_most_common_order": len(chosen),
        "gaps": gaps,
        "total_p50_us": round(statistics.median(total), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each request")
    parser.add_argument("--keep", default=None, help="keep the traced build and the raw trace in this directory")
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="stage-trace-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("building the traced copy ...", file=sys.stderr)
    site = build_traced_copy(workdir)
    trace = workdir / "trace.txt"
    trace.unlink(missing_ok=True)
    asyncio.run(run(args, site, trace))
    print(json.dumps(analyse(trace), indent=2))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
