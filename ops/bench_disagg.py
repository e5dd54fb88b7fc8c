"""Time to second token in a disaggregated cluster, and the KV transfer's share of it.

    python ops/bench_disagg.py [--prompt-tokens 1024] [--requests 16]

Starts `pdserve up` (separate nats-server, router, prefill and decode processes) on the 56M
benchmark Llama in bf16, sends sequential streaming requests (so each is measured alone),
and records per request the time to the first and to the second streamed token. The prefill
worker logs every KV push ("kv pushed": bytes, seconds); the script reads those back and
prints the transfer's share of the time to second token. Sequential on purpose: under load
the share is diluted by queueing, which says nothing about the transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_offline import bench_model_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(model: Path, port: int, log_dir: Path, pin: str | None) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "pdserve.cli",
        "up",
        "--model",
        str(model),
        "--dtype",
        "bfloat16",
        "--port",
        str(port),
        "--log-dir",
        str(log_dir),
    ]
    if pin:
        argv += ["--pin", pin]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if "ready; OpenAI API" in line:
            return proc
    raise SystemExit("cluster did not start; see " + str(log_dir))


def model_name(client: httpx.Client) -> str:
    return str(client.get("/v1/models").json()["data"][0]["id"])


def one_request(client: httpx.Client, prompt: list[int]) -> tuple[float, float]:
    body = {
        "model": model_name(client),
        "prompt": prompt,
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                for _ in choice.get("token_ids") or []:
                    stamps.append(time.perf_counter() - start)
    return stamps[0], stamps[1]


def pushes(log: Path) -> list[dict[str, float]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "kv pushed":
            out.append(record)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--pin", default="router=0;prefill=0;decode=1", help="cores per role for pdserve up")
    parser.add_argument("--cache", default=os.environ.get("PDSERVE_CACHE_DIR", str(Path.home() / ".cache/pdserve")))
    args = parser.parse_args()

    model = bench_model_path(Path(args.cache))
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="pdserve-bench-disagg-"))
    proc = start_cluster(model, port, log_dir, args.pin)
    rng = random.Random(0)
    ttft, ttst = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            one_request(client, [rng.randrange(300, 32000) for _ in range(32)])  # warm-up
            for i in range(args.requests):
                prompt = [rng.randrange(300, 32000) for _ in range(args.prompt_tokens)]
                first, second = one_request(client, prompt)
                ttft.append(first)
                ttst.append(second)
                print(f"request {i}: ttft {first * 1000:.1f} ms, second token {second * 1000:.1f} ms", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    records = pushes(log_dir / "prefill-0.log")[1:]  # skip the warm-up's push
    seconds = [float(r["seconds"]) for r in records]
    nbytes = [float(r["bytes"]) for r in records]
    med = statistics.median
    kv_mib = med(nbytes) / 2**20
    print(f"\nprompt {args.prompt_tokens} tokens, {len(ttst)} sequential requests, KV {kv_mib:.2f} MiB each")
    print(f"time to first token   p50 {med(ttft) * 1000:8.1f} ms")
    print(f"time to second token  p50 {med(ttst) * 1000:8.1f} ms")
    print(f"KV push (UCX)         p50 {med(seconds) * 1000:8.2f} ms  ({med(nbytes) / med(seconds) / 1e9:.2f} GB/s)")
    print(f"transfer share of time to second token: {med(seconds) / med(ttst) * 100:.1f}%")
    print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
