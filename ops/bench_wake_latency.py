"""How long a message takes between two processes after they sat idle, on this machine.

    python ops/bench_wake_latency.py [--gaps-ms 0 1 4 20] [--reps 1000]

Two figures per idle gap (the sender sleeps that long before each message, so the receiver and
the sender are idle as a one-request-at-a-time benchmark leaves them):
- `tcp_round_trip_us`: a byte to a second process over loopback TCP and a byte back (plain
  sockets, no event loop, no NATS);
- `nats_hop_us`: PUB on one connection to the MSG on another through a real nats-server
  (the raw protocol over plain sockets, no client library).

This explains the router-overhead figures (docs/benchmarks.md): a request crosses about six
such process wake-ups that an in-process call does not, and on a VM each one costs several
times more after a few milliseconds of idleness than back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _median_p90(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p90": round(statistics.quantiles(values, n=10)[-1], 1)}


def tcp_round_trip(gap_s: float, reps: int) -> dict[str, float]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    for s in (client, peer):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pid = os.fork()
    if pid == 0:  # the echoing process
        client.close()
        while peer.recv(1):
            peer.sendall(b"y")
        os._exit(0)
    peer.close()
    times = []
    for _ in range(reps):
        time.sleep(gap_s)
        started = time.perf_counter_ns()
        client.sendall(b"x")
        client.recv(1)
        times.append((time.perf_counter_ns() - started) / 1e3)
    client.close()
    os.waitpid(pid, 0)
    server.close()
    return _median_p90(times)


def _nats_connection(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.recv(4096)  # INFO
    conn.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    _read_until(conn, b"PONG")
    return conn


def _read_until(conn: socket.socket, marker: bytes) -> None:
    data = b""
    while marker not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise SystemExit("nats-server closed the connection")
        data += chunk


def nats_hop(port: int, gap_s: float, reps: int) -> dict[str, float]:
    sub, pub = _nats_connection(port), _nats_connection(port)
    sub.sendall(b"SUB hop 1\r\nPING\r\n")
    _read_until(sub, b"PONG")
    times = []
    for _ in range(reps):
        time.sleep(gap_s)
        started = time.perf_counter_ns()
        pub.sendall(b"PUB hop 5\r\nhello\r\n")
        _read_until(sub, b"hello")
        times.append((time.perf_counter_ns() - started) / 1e3)
    sub.close()
    pub.close()
    return _median_p90(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaps-ms", type=float, nargs="+", default=[0.0, 1.0, 4.0, 20.0])
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    if args.reps < 10 or any(g < 0 for g in args.gaps_ms):
        parser.error("--reps must be at least 10 and every gap at least 0")
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    binary = str(Path(sys.executable).parent / "nats-server")
    server = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("nats-server did not start") from None
                time.sleep(0.05)
        results = {}
        for gap in args.gaps_ms:
            print(f"idle gap {gap:g} ms ...", file=sys.stderr)
            results[f"gap_{gap:g}_ms"] = {
                "tcp_round_trip_us": tcp_round_trip(gap / 1e3, args.reps),
                "nats_hop_us": nats_hop(port, gap / 1e3, args.reps),
            }
        print(json.dumps(results, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
