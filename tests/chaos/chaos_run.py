"""Chaos run: streaming requests while a decode worker and a prefill worker are killed -9 and
nats-server restarts. Every process is real (nats-server, router, 2 prefill, 2 decode), on the
built-in tiny model in float32.

    python tests/chaos/chaos_run.py                  # 64 requests over 10 s, the full run
    python tests/chaos/chaos_run.py --requests 24    # the short form CI runs (tests/chaos)

Prints, and writes as JSON with --json: sent, completed, failed with a clear error, lost (no
final answer by the deadline), tokens duplicated or dropped (each completed stream against
`LLM.generate` greedy), and KV blocks still held by the surviving workers once all is done.
Exit status 1 when lost, duplicated/dropped or leaked is not 0, or under 95% completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from pdserve.bench.sse_lines import sse_lines
from pdserve.services.local_broker import (
    free_port,
    local_broker_argv,
    nats_server_binary,
    wait_for_broker,
    wait_for_port,
)

VOCAB = 261  # the built-in tiny model's byte vocabulary


@dataclass
class Outcome:
    sent: int = 0
    completed: int = 0
    failed_clear: int = 0
    lost: int = 0
    duplicated_or_dropped: int = 0
    diverged: int = 0  # completed, no token duplicated or dropped, but a different token (a near-tie)
    leaked_blocks: int = 0
    migrations_seen: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def completed_ratio(self) -> float:
        return self.completed / max(self.sent, 1)

    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated_or_dropped == 0
            and self.leaked_blocks == 0
            and self.completed_ratio >= 0.95
        )


class Processes:
    """The cluster's processes, each logging to its own file under `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nats_port = 0  # picked by the first nats-server, kept across its restarts
        self.http_port = free_port()
        self.cluster = f"chaos{uuid.uuid4().hex[:6]}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def spawn(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ, PDSERVE_TORCH_THREADS="1", PDSERVE_LOG_LEVEL="info")
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def start_nats(self) -> None:
        if not self.nats_port:  # first start: nats-server picks the port (local_broker says why)
            self.spawn("nats", local_broker_argv(nats_server_binary(), self.log_dir))
            url = wait_for_broker(self.procs["nats"], self.log_dir, 10)
            if url is None:
                raise RuntimeError("nats-server did not start")
            self.nats_port = int(url.rsplit(":", 1)[1])
            return
        self.spawn("nats", [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.nats_port)])
        if not wait_for_port(self.nats_port, 10):
            raise RuntimeError("nats-server did not start")

    def start_services(self, prefill: int, decode: int) -> None:
        cli = [sys.executable, "-m", "pdserve.cli"]
        bus = ["--nats", self.nats_url, "--cluster", self.cluster]
        worker = [*bus, "--dtype", "float32", "--heartbeat-s", "0.5", "--kv-lease-s", "5"]
        self.spawn(
            "router",
            [
                *cli,
                "router",
                *bus,
                "--port",
                str(self.http_port),
                "--request-timeout-s",
                "90",
                "--stall-timeout-s",
                "5",
            ],
        )
        for i in range(prefill):
            self.spawn(f"prefill-{i}", [*cli, "prefill", *worker[:-2], "--worker-id", f"prefill-{i}"])
        for i in range(decode):
            self.spawn(f"decode-{i}", [*cli, "decode", *worker, "--worker-id", f"decode-{i}"])

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if name == "nats" else signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def wait_cluster(base: str, roles: dict[str, int], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                workers = (await client.get("/cluster")).json()["workers"]
                counts = {role: sum(w["role"] == role for w in workers) for role in roles}
                if counts == roles:
                    return
            await asyncio.sleep(0.25)
    raise TimeoutError(f"the cluster never came up with {roles}")


async def stream_one(
    client: httpx.AsyncClient, prompt: list[int], max_tokens: int, deadline_s: float
) -> tuple[str, list[int], str]:
    """("completed" | "failed" | "lost", streamed token ids, error message)."""
    body = {
        "model": "pdserve-tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    tokens: list[int] = []
    try:
        async with asyncio.timeout(deadline_s):
            async with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    return "failed", tokens, f"HTTP {response.status_code}: {text[:200]}"
                finished = False
                async for line in sse_lines(response):
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        return "failed", tokens, str(event["error"].get("message", event["error"]))
                    for choice in event.get("choices", []):
                        tokens += choice.get("token_ids") or []
                        finished = finished or choice.get("finish_reason") is not None
                if finished:
                    return "completed", tokens, ""
                return "failed", tokens, "stream ended without a finish reason"
    except TimeoutError:
        return "lost", tokens, "no final answer by the deadline"
    except httpx.HTTPError as exc:
        return "failed", tokens, f"connection error: {exc!r}"


def classify_tokens(got: list[int], expected: list[int]) -> str:
    """ "same"; "dup_or_drop" when, at the first difference, a token is repeated or skipped, or
    the stream is a strict prefix or extension of the expected one; else "diverged" (another
    token won: a near-tie flipped by recomputing the KV instead of decoding it, not a loss)."""
    if got == expected:
        return "same"
    n = min(len(got), len(expected))
    first = next((i for i in range(n) if got[i] != expected[i]), n)
    if first == n:
        return "dup_or_drop"
    if first > 0 and got[first] == expected[first - 1]:
        return "dup_or_drop"
    if first + 1 < len(expected) and got[first] == expected[first + 1]:
        return "dup_or_drop"
    return "diverged"


async def run(args: argparse.Namespace) -> Outcome:
    from pdserve import LLM, SamplingParams

    rng = random.Random(args.seed)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(16, 300))] for _ in range(args.requests)]
    max_tokens = [rng.randint(120, 360) for _ in range(args.requests)]
    print(f"reference: LLM.generate on {args.requests} prompts", flush=True)
    llm = LLM(dtype="float32")
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in max_tokens]
    expected = [o.token_ids for o in llm.generate(prompts, params)]
    del llm

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pdserve-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(log_dir)
    outcome = Outcome(sent=args.requests)
    try:
        procs.start_nats()
        procs.start_services(prefill=2, decode=2)
        base = f"http://127.0.0.1:{procs.http_port}"
        print(f"starting nats-server, router, 2 prefill, 2 decode (logs: {log_dir})", flush=True)
        await wait_cluster(base, {"prefill": 2, "decode": 2})
        print("cluster up; sending", flush=True)

        async def faults() -> None:
            window = args.window_s
            await asyncio.sleep(window * 0.2)
            print("chaos: kill -9 decode-0", flush=True)
            procs.kill("decode-0")
            await asyncio.sleep(window * 0.2)
            print("chaos: kill -9 prefill-0", flush=True)
            procs.kill("prefill-0")
            await asyncio.sleep(window * 0.2)
            print("chaos: restart nats-server", flush=True)
            procs.kill("nats")
            await asyncio.sleep(1.0)
            procs.start_nats()

        async def one(i: int, client: httpx.AsyncClient) -> tuple[str, list[int], str]:
            await asyncio.sleep(args.window_s * i / args.requests)  # spread over the chaos window
            return await stream_one(client, prompts[i], max_tokens[i], args.deadline_s)

        limits = httpx.Limits(max_connections=args.requests + 8)
        async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(None), limits=limits) as client:
            chaos = asyncio.create_task(faults())
            results = await asyncio.gather(*(one(i, client) for i in range(args.requests)))
            await chaos
            for i, (status, tokens, error) in enumerate(results):
                if status == "completed":
                    verdict = classify_tokens(tokens, expected[i])
                    outcome.completed += 1
                    outcome.duplicated_or_dropped += verdict == "dup_or_drop"
                    outcome.diverged += verdict == "diverged"
                elif status == "failed":
                    outcome.failed_clear += bool(error)
                    outcome.lost += not error
                    outcome.errors[error[:80]] = outcome.errors.get(error[:80], 0) + 1
                else:
                    outcome.lost += 1
            outcome.leaked_blocks = await leaked_blocks(client)
        outcome.migrations_seen = count_in_logs(log_dir / "router.log", "request lost; migrating")
    finally:
        procs.stop_all()
    return outcome


async def leaked_blocks(client: httpx.AsyncClient, settle_s: float = 15.0) -> int:
    """KV blocks the surviving workers still hold once every request has ended (0 expected)."""
    deadline = time.monotonic() + settle_s
    held = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            workers = (await client.get("/cluster", timeout=2.0)).json()["workers"]
            held = sum(int(w["kv_blocks_used"]) for w in workers)
            if held == 0 and workers:
                return 0
        await asyncio.sleep(0.5)
    return held


def count_in_logs(path: Path, needle: str) -> int:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").count(needle)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="streaming requests, spread over the window")
    parser.add_argument(
        "--window-s", type=float, default=10.0, help="requests arrive, and faults strike, in this window"
    )
    parser.add_argument(
        "--deadline-s", type=float, default=120.0, help="a request with no final answer by then is lost"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--json", default=None, help="write the outcome here as JSON")
    args = parser.parse_args(argv)
    outcome = asyncio.run(run(args))
    report = {**asdict(outcome), "completed_ratio": round(outcome.completed_ratio, 4), "ok": outcome.ok()}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if outcome.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
