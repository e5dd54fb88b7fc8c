"""`pdserve up` as a child process for tests: started, read up to its "ready" line, stopped with
SIGINT (a drain) when the test is done."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)  # what it printed, up to and with the ready line

    @property
    def ready_line(self) -> str:
        return self.lines[-1] if self.lines else ""


@contextlib.contextmanager
def pdserve_up(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 240) -> Iterator[UpProcess]:
    """`pdserve up ARGS`, yielded once it printed "ready" (the test fails with its output if it
    never does), then stopped."""
    argv = [sys.executable, "-m", "pdserve.cli", "up", *args]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    up = UpProcess(process)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            up.lines.append(line)
            if "ready; OpenAI API at" in line:
                break
        assert "ready; OpenAI API at" in up.ready_line, "".join(up.lines)
        yield up
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
