"""`pdserve bench sweep`: targets times request rates in one run.

A target is a pdserve cluster that the sweep starts with `pdserve up` (colocated with K
workers, or disaggregated with P prefill and D decode workers, each process pinned to the
cores the target names) or an external OpenAI-compatible URL. Each cluster is started, waited
for until /health answers, measured at every rate, and stopped before the next one starts, so
targets never compete for the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from pdserve.cpu_cores import parse_pin_spec

HEALTH_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 90.0  # `pdserve up` drains workers (up to 35 s), then the router and the broker


@dataclass(frozen=True, slots=True)
class Target:
    """One system under test: `mode` is "colocated" or "disaggregated" for a cluster the sweep
    starts, None for an external `url`. `pin` is `pdserve up --pin` syntax."""

    label: str
    mode: str | None = None
    workers: int = 1
    prefill: int = 1
    decode: int = 1
    pin: str | None = None
    url: str | None = None

    def up_argv(self, port: int, log_dir: Path, up_args: list[str]) -> list[str]:
        assert self.mode is not None
        argv = [sys.executable, "-m", "pdserve.cli", "up", "--mode", self.mode, "--port", str(port)]
        if self.mode == "colocated":
            argv += ["--workers", str(self.workers)]
        else:
            argv += ["--prefill", str(self.prefill), "--decode", str(self.decode)]
        if self.pin:
            argv += ["--pin", self.pin]
        return [*argv, "--log-dir", str(log_dir), *up_args]


def parse_target(spec: str) -> Target:
    """`[LABEL=]colocated:K[@PIN]`, `[LABEL=]disaggregated:P:D[@PIN]` (or `disagg:`), or
    `[LABEL=]http(s)://host:port`. PIN is `pdserve up --pin` syntax, e.g. router=0;worker=0-1."""
    label = None
    head, eq, rest = spec.partition("=")
    if eq and ":" not in head and "@" not in head:
        label, spec = head, rest
    if spec.startswith(("http://", "https://")):
        return Target(label or "external", url=spec.rstrip("/"))
    body, _, pin = spec.partition("@")
    kind, *counts = body.split(":")
    try:
        numbers = [int(c) for c in counts]
    except ValueError:
        raise ValueError(f"bad target {spec!r}: worker counts must be integers") from None
    if any(n < 1 for n in numbers):
        raise ValueError(f"bad target {spec!r}: worker counts must be at least 1")
    roles = frozenset({"router", "worker"} if kind == "colocated" else {"router", "prefill", "decode"})
    try:
        parse_pin_spec(pin, roles)  # a bad pin is refused before any cluster of the sweep starts
    except ValueError as e:
        raise ValueError(f"bad target {spec!r}: {e}") from None
    if kind == "colocated" and len(numbers) == 1:
        return Target(label or f"colocated-{numbers[0]}w", "colocated", workers=numbers[0], pin=pin or None)
    if kind in ("disaggregated", "disagg") and len(numbers) == 2:
        p, d = numbers
        return Target(label or f"disagg-{p}p{d}d", "disaggregated", prefill=p, decode=d, pin=pin or None)
    raise ValueError(f"bad target {spec!r}; expected colocated:K[@PIN], disaggregated:P:D[@PIN] or an http(s):// URL")


def parse_rates(text: str) -> list[float]:
    """'1,2,4,inf' -> [1.0, 2.0, 4.0, inf]."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"bad request rates {text!r}; expected numbers like 1,2,4,inf") from None
    if not rates or any(not r > 0 for r in rates):
        raise ValueError(f"bad request rates {text!r}; each must be positive (or inf)")
    return rates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A `pdserve up` process for one target, in its own process group so that stopping it
    can never leave a worker behind."""

    def __init__(self, target: Target, up_args: list[str], log_dir: Path) -> None:
        self.target = target
        self.port = _free_port()
        self.log_dir = log_dir
        self.argv = target.up_argv(self.port, log_dir, up_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        try:
            self._start(timeout_s)
        except BaseException:  # Ctrl-C or SIGTERM while it starts: `with` never reaches __exit__
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "up.log", "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"{self.target.label}: pdserve up exited ({code}); see {self.log_dir}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.target.label}: not healthy after {timeout_s:.0f} s; see {self.log_dir}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, systemd, a CI cancel) unwinds the sweep like Ctrl-C, so every `with
    Cluster` block stops its cluster: the clusters run in sessions of their own, and the default
    SIGTERM action would end the sweep and leave them serving."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
