"""A service started before its broker waits for it as long as it takes (compose starts them in
any order); SIGTERM in that wait must still stop it promptly, with nothing to drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pdserve.services.runners import started_before_stop


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.e2e
@pytest.mark.parametrize("role", ["decode", "worker"])
def test_sigterm_while_waiting_for_nats_stops_the_worker(role: str) -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "service.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pdserve.cli", role, "--nats", url, "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PDSERVE_LOG_FORMAT": "json"},
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while b"nats error; retrying" not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "the worker never tried the broker"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)  # it used to ignore the signal until the broker came
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "signal received before the worker was up; stopping" in text
    assert "worker stopped" in text


@pytest.mark.e2e
def test_up_with_an_unreachable_broker_says_so_and_stops_on_ctrl_c() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdserve.cli", "up", "--nats", url, "--port", str(closed_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "cannot reach NATS at" in line or not line:
                break
        assert f"cannot reach NATS at {url} yet" in seen[-1], "".join(seen)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 1  # not healthy: startup abandoned
        assert time.monotonic() - started < 20, "the workers held up the stop"
    finally:
        with contextlib.suppress(ProcessLookupError):  # up and any service it left behind
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_stop_wins_even_over_a_start_that_swallows_a_cancel() -> None:
    swallowed = []

    async def stubborn_start() -> None:
        while True:  # as nats-py's connect loop does when a cancel lands in its cleanup
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = time.monotonic()
    assert await asyncio.wait_for(started_before_stop(stubborn_start(), stop), timeout=10) is False
    assert swallowed == [True]
    assert time.monotonic() - began < 3, "the stop waited for the start-up's own sleep"


async def test_start_first_wins_and_its_error_is_raised() -> None:
    async def quick() -> None:
        await asyncio.sleep(0)

    async def broken() -> None:
        raise OSError("no route")

    assert await started_before_stop(quick(), asyncio.Event()) is True
    with pytest.raises(OSError, match="no route"):
        await started_before_stop(broken(), asyncio.Event())
