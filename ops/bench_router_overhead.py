"""Router overhead (issue 5): what the HTTP router and NATS add per request and per streamed
token over calling the engine in-process, and how many streamed tokens/s one router relays.

    python ops/bench_router_overhead.py latency [--reps 200] [--awake-cores]
    python ops/bench_router_overhead.py throughput [--concurrency 32] [--tokens 256] [--seconds 10]
    python ops/bench_router_overhead.py http-floor [--reps 300]

latency: the same streaming request (built-in tiny model, prompt "hello world", greedy,
ignore_eos, max_tokens 1 and 16), one at a time, through (a) LocalBackend in this process,
(c) HTTP -> router process with LocalBackend, (b) HTTP -> `pdserve router` -> NATS ->
`pdserve worker` (and b0: the same through a second router and worker, on a cluster of their
own, importing pdserve from --baseline-pythonpath). The paths take turns every repetition, in a
fresh random order each time, so machine noise and what ran just before hit them alike.
Reported: p50/p90 latency of each, and of the paired differences c-a (HTTP and router), b-c
(NATS and the worker's service code), b-a (all of it); per streamed token is the growth of the
b-a median from 1 to 16 tokens, divided by 15.

`--awake-cores` runs one busy loop per core at SCHED_IDLE priority for the whole measurement:
any runnable process preempts it at once, but no core ever halts, so a wake-up never waits for
the hypervisor to resume an idle vCPU. It shows how much of b-a is this VM's idle wake-ups
rather than pdserve (docs/benchmarks.md); the reported figures without it are the ones that count.

http-floor: what the router's own HTTP path costs, without NATS or a model: the same request,
one at a time, paths in a fresh random order each repetition, through (n) the router app over a
backend that answers at once with one token, and (u) a bare ASGI app on the same server setup
(uvicorn, httptools, uvloop) sending a fixed one-token SSE body. n-u is the router's code per
request (parsing, validation, tokenizing, the request's tasks, SSE); u is the floor under it
(the client, two process wake-ups, the sockets, uvicorn). `--baseline-pythonpath DIR` adds path
n0: path n with pdserve imported from DIR (the router's own code, A/B in the same run).

throughput: `pdserve router` pinned to core 0, against a protocol-exact fake worker that
streams one token per chunk with no model (router_bench_roles.token_source), with closed-loop
streaming clients in another process; nats-server, the fake worker and the clients share
core 1. Reported: tokens/s received by the clients, CPU share of every process, and the
router's tokens per CPU second (what it would relay with a whole core to itself).
`--profile FILE` runs the router under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import router_bench_roles as roles
from pdserve import event_loop
from pdserve.services.local_broker import free_port, local_broker_argv, nats_server_binary, wait_for_broker

PROMPT = "hello world"


def pinned(argv: list[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *argv] if cores and (os.cpu_count() or 1) > 1 else argv


class Processes:
    """Children of this benchmark, logs in one temp dir, all terminated on exit."""

    def __init__(self) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="router-bench-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_idle_spinners(procs: Processes) -> None:
    """One busy loop per core at SCHED_IDLE (it runs only when nothing else wants the core), so
    that no core halts between the benchmark's turns. The cores are the ones this process may
    use, which a container or taskset can make fewer than the machine's."""
    spin = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"
    for core in sorted(os.sched_getaffinity(0)):
        procs.start(f"spinner-{core}", pinned([sys.executable, "-c", spin], str(core)))


def start_nats(procs: Processes, cores: str | None = None) -> str:
    """nats-server on a port it picks (local_broker says why); taskset execs it, so the pid is its own."""
    proc = procs.start("nats", pinned(local_broker_argv(nats_server_binary(), procs.log_dir), cores))
    url = wait_for_broker(proc, procs.log_dir, 10)
    if url is None:
        raise SystemExit(f"nats-server did not start; see {procs.log_dir / 'nats.log'}")
    return url


def pdserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "pdserve.cli", *args]


async def wait_healthy(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"router on port {port} never became healthy")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def summary(series: dict[str, list[float]]) -> dict[str, object]:
    return {name: {"p50_ms": round(pct(v, 50), 3), "p90_ms": round(pct(v, 90), 3)} for name, v in series.items()}


async def take_turns(
    paths: Mapping[str, Callable[[], Awaitable[None]]], reps: int, warmup: int, seed: int
) -> dict[str, list[float]]:
    """Each path once per repetition, in a fresh random order every time: what ran just before
    a path (warm caches, a process still waking) shifts its time, and a fixed order would favour
    one path. Milliseconds per call, warm-up repetitions left out."""
    times: dict[str, list[float]] = {path: [] for path in paths}
    rng = random.Random(seed)
    for rep in range(warmup + reps):
        for path in rng.sample(list(paths), len(paths)):
            start = time.perf_counter()
            await paths[path]()
            if rep >= warmup:
                times[path].append((time.perf_counter() - start) * 1e3)
    return times


def cluster_pair(nats_url: str, cluster: str, port: int) -> tuple[list[str], list[str]]:
    """argv of `pdserve worker` (float32, quiet) and `pdserve router` on `port`, for `cluster`."""
    bus = ["--nats", nats_url, "--cluster", cluster, "--log-level", "warning"]
    worker = pdserve("worker", *bus, "--dtype", "float32", "--heartbeat-s", "0.5")
    return worker, pdserve("router", *bus, "--port", str(port))


async def run_latency(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from pdserve.engine.llm_engine import LLMEngine
    from pdserve.models import builtin_model_path
    from pdserve.sampling_params import SamplingParams
    from pdserve.serving.backend import GenerateRequest
    from pdserve.serving.local_backend import LocalBackend
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # the worker and the local router run with one torch thread too
    procs = Processes()
    try:
        if args.awake_cores:
            start_idle_spinners(procs)
        nats_url, cluster = start_nats(procs), f"bench{uuid.uuid4().hex[:6]}"
        cluster_port, local_port = free_port(), free_port()
        one_thread = {"PDSERVE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
        worker, router = cluster_pair(nats_url, cluster, cluster_port)
        procs.start("worker", worker, one_thread)
        procs.start("router", router)
        if args.baseline_pythonpath:
            # The whole baseline (router and worker) on its own cluster, so a change on either
            # side shows in b0 vs b.
            base_port = free_port()
            env = {"PYTHONPATH": args.baseline_pythonpath}
            worker, router = cluster_pair(nats_url, f"base{uuid.uuid4().hex[:6]}", base_port)
            procs.start("baseline-worker", worker, {**one_thread, **env})
            procs.start("baseline-router", router, env)
        procs.start("local-router", [sys.executable, __file__, "serve-local", "--port", str(local_port)], one_thread)
        backend = LocalBackend(LLMEngine.from_model(None, dtype="float32"))
        await backend.start()
        tokenizer = AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)
        await wait_healthy(cluster_port)
        await wait_healthy(local_port)
        ports = {"b": cluster_port, "c": local_port}
        if args.baseline_pythonpath:
            await wait_healthy(base_port)
            ports["b0"] = base_port
        conns = {path: await roles.HttpConnection.open("127.0.0.1", port) for path, port in ports.items()}

        async def in_process(max_tokens: int) -> None:
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            ids = tokenizer.encode(PROMPT)  # the router tokenizes too
            request = GenerateRequest(uuid.uuid4().hex, ids, params, time.time() + 60)
            async for chunk in backend.generate(request):
                if chunk.finish_reason is not None:
                    return

        async def over_http(path: str, max_tokens: int) -> None:
            body = {"model": "pdserve-tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True}  # fmt: skip
            events = await conns[path].post_stream("/v1/completions", body)
            assert events >= 1, f"{path}: no tokens"

        results: dict[str, object] = {}
        for max_tokens in (1, 16):
            paths = {"a": functools.partial(in_process, max_tokens)}
            paths |= {path: functools.partial(over_http, path, max_tokens) for path in conns}
            times = await take_turns(paths, args.reps, args.warmup, seed=max_tokens)
            diffs = {
                "c-a": [c - a for a, c in zip(times["a"], times["c"], strict=True)],
                "b-c": [b - c for b, c in zip(times["b"], times["c"], strict=True)],
                "b-a": [b - a for a, b in zip(times["a"], times["b"], strict=True)],
            }
            if "b0" in times:
                diffs["b0-a"] = [b - a for a, b in zip(times["a"], times["b0"], strict=True)]
            results[f"max_tokens={max_tokens}"] = summary({**times, **diffs})
        per_request = {k: v["b-a"]["p50_ms"] for k, v in results.items()}  # type: ignore[index]
        results["per_token_overhead_ms"] = round((per_request["max_tokens=16"] - per_request["max_tokens=1"]) / 15, 4)
        results["awake_cores"] = args.awake_cores
        for conn in conns.values():
            conn.close()
        await backend.close()
        return results
    finally:
        procs.stop()


async def run_http_floor(args: argparse.Namespace) -> dict[str, object]:
    procs = Processes()
    try:
        ports = {"n": free_port(), "u": free_port()}
        if args.baseline_pythonpath:
            ports["n0"] = free_port()
        for path, port in ports.items():
            role, env = (path, None) if path != "n0" else ("n", {"PYTHONPATH": args.baseline_pythonpath})
            procs.start(f"serve-{path}", [sys.executable, __file__, f"serve-{role}", "--port", str(port)], env)
        for port in ports.values():
            await wait_healthy(port)
        conns = {path: await roles.HttpConnection.open("127.0.0.1", port) for path, port in ports.items()}
        body = {"model": "pdserve-tiny", "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "stream": True}

        async def over_http(path: str) -> None:
            events = await conns[path].post_stream("/v1/completions", body)
            assert events >= 1, f"{path}: no tokens"

        times = await take_turns(
            {path: functools.partial(over_http, path) for path in conns}, args.reps, args.warmup, 0
        )
        for conn in conns.values():
            conn.close()
        diffs = {f"{n}-u": [a - b for a, b in zip(times[n], times["u"], strict=True)] for n in times if n != "u"}
        return summary({**times, **diffs})
    finally:
        procs.stop()


async def run_throughput(args: argparse.Namespace) -> dict[str, object]:
    """One measurement, or with --baseline-pythonpath, baseline and current taking turns for
    --rounds rounds (medians reported), so machine noise hits both alike."""
    variants = {"baseline": args.baseline_pythonpath} if args.baseline_pythonpath else {}
    variants["current"] = ""
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, pythonpath in variants.items():
            runs[name].append(await throughput_once(args, pythonpath))
    keys = ("tokens_per_s", "router_tokens_per_cpu_s")
    summary: dict[str, object] = {
        name: {key: round(statistics.median(float(r[key]) for r in results), 1) for key in keys}  # type: ignore[arg-type]
        for name, results in runs.items()
    }
    summary["runs"] = runs
    summary["cores"] = {"router": "0", "nats, token source, clients": "1"}
    return summary


async def throughput_once(args: argparse.Namespace, pythonpath: str) -> dict[str, object]:
    procs = Processes()
    try:
        nats_url, cluster = start_nats(procs, "1"), f"bench{uuid.uuid4().hex[:6]}"
        port = free_port()
        source = procs.start("token-source", pinned([sys.executable, __file__, "token-source", "--nats", nats_url,
                                                     "--cluster", cluster], "1"))  # fmt: skip
        router_argv = ["-m", "pdserve.cli", "router", "--nats", nats_url, "--cluster", cluster, "--port", str(port),
                       "--log-level", args.router_log_level]  # fmt: skip
        if args.profile:
            router_argv = ["-m", "cProfile", "-o", args.profile, *router_argv]
        env = {"PYTHONPATH": pythonpath} if pythonpath else None
        router = procs.start("router", pinned([sys.executable, *router_argv], "0"), env)
        await wait_healthy(port)
        pids = {"router": router.pid, "token_source": source.pid, "nats": procs.procs["nats"].pid}
        clients = subprocess.run(
            pinned([sys.executable, __file__, "clients", "--port", str(port), "--concurrency", str(args.concurrency),
                    "--tokens", str(args.tokens), "--warmup", str(args.warmup_s), "--seconds", str(args.seconds),
                    "--pids", json.dumps(pids)], "1"),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result: dict[str, object] = json.loads(clients.stdout)
        return result
    finally:
        if args.profile:
            procs.procs["router"].send_signal(signal.SIGINT)  # the router shuts down; cProfile writes its file
            procs.procs["router"].wait(timeout=60)
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--reps", type=int, default=200)
    lat.add_argument("--warmup", type=int, default=20)
    lat.add_argument("--baseline-pythonpath", default="", help="also time path b with pdserve imported from here (b0)")
    lat.add_argument("--awake-cores", action="store_true", help="keep every core from halting (SCHED_IDLE busy loops)")
    floor = sub.add_parser("http-floor")
    floor.add_argument("--reps", type=int, default=300)
    floor.add_argument("--warmup", type=int, default=20)
    floor.add_argument("--baseline-pythonpath", default="", help="also time path n importing pdserve from here (n0)")
    thr = sub.add_parser("throughput")
    thr.add_argument("--concurrency", type=int, default=32)
    thr.add_argument("--tokens", type=int, default=256, help="max_tokens of every request")
    thr.add_argument("--seconds", type=float, default=10.0)
    thr.add_argument("--warmup-s", type=float, default=3.0)
    thr.add_argument("--router-log-level", default="info")
    thr.add_argument("--profile", default=None, help="write the router's cProfile stats here")
    thr.add_argument("--rounds", type=int, default=1)
    thr.add_argument(
        "--baseline-pythonpath", default="", help="also run a router importing pdserve from here (A/B, same run)"
    )
    # Internal: the child processes.
    for role in ("serve-local", "serve-n", "serve-u"):
        sub.add_parser(role).add_argument("--port", type=int, required=True)
    src = sub.add_parser("token-source")
    src.add_argument("--nats", required=True)
    src.add_argument("--cluster", required=True)
    cl = sub.add_parser("clients")
    for flag in ("--port", "--concurrency", "--tokens"):
        cl.add_argument(flag, type=int, required=True)
    cl.add_argument("--warmup", type=float, required=True)
    cl.add_argument("--seconds", type=float, required=True)
    cl.add_argument("--pids", required=True)
    args = parser.parse_args()

    if args.command.startswith("serve-"):
        from pdserve.log_setup import configure_logging

        # At warning, as the cluster router of path b runs (`--log-level warning`): two info
        # lines per request would make these routers slower than their code is (c-a, n-u).
        configure_logging("router", "warning")
        serve = {"serve-local": roles.serve_local, "serve-n": roles.serve_instant, "serve-u": roles.serve_bare}
        event_loop.run(serve[args.command](args.port))
    elif args.command == "token-source":
        event_loop.run(roles.token_source(args.nats, args.cluster, "fake-worker"))
    elif args.command == "clients":
        pids = json.loads(args.pids)
        load = roles.stream_clients(args.port, args.concurrency, args.tokens, args.warmup, args.seconds, pids)
        print(json.dumps(event_loop.run(load)))
    else:
        run = {"latency": run_latency, "http-floor": run_http_floor, "throughput": run_throughput}[args.command]
        print(json.dumps(event_loop.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
