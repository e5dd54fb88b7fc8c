"""`pdserve up` as a user runs it: separate processes, a real gateway, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from cluster_harness import free_port


def test_pdserve_up_serves_and_stops(tmp_path: object) -> None:
    port = free_port()
    env = dict(os.environ, PDSERVE_LOG_LEVEL="info")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdserve.cli", "up", "--port", str(port), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready; OpenAI API at" in line:
                break
        assert any("ready; OpenAI API at" in line for line in lines), "".join(lines)
        base = f"http://127.0.0.1:{port}"
        body = {"model": "pdserve-tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
        roles = sorted(w["role"] for w in httpx.get(f"{base}/cluster", timeout=5).json()["workers"])
        assert roles == ["decode", "prefill"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, "".join(lines)
