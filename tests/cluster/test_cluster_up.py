"""`pdserve up` as a user runs it: separate processes, a real gateway, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cluster_harness import NatsServer, free_port


def test_pdserve_up_serves_and_stops(tmp_path: object) -> None:
    port = free_port()
    env = dict(os.environ, PDSERVE_LOG_LEVEL="info")
    argv = [sys.executable, "-m", "pdserve.cli", "up", "--port", str(port), "--log-dir", str(tmp_path)]
    defaults = Path(f"{tmp_path}/generation")  # sampling defaults of our own: max_new_tokens caps requests
    defaults.mkdir()
    (defaults / "generation_config.json").write_text('{"max_new_tokens": 6}')
    proc = subprocess.Popen(
        [*argv, "--nice", "router=3", "--max-model-len", "96", "--generation-config", str(defaults)],
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
        assert r.json()["usage"]["completion_tokens"] == 6  # 8 asked, capped by --generation-config's 6
        # --max-model-len reached every worker: the router serves the context they report.
        assert httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["max_model_len"] == 96
        roles = sorted(w["role"] for w in httpx.get(f"{base}/cluster", timeout=5).json()["workers"])
        assert roles == ["decode", "prefill"]
        scraped = httpx.get(f"{base}/metrics", timeout=5).text.splitlines()
        assert {'pdserve_workers_live{role="decode"} 1', 'pdserve_workers_live{role="prefill"} 1'} <= set(scraped)
        assert "pdserve_router_time_to_first_token_seconds_count 1" in scraped
        # --nice router=3: the router runs 3 below our priority, the workers at ours.
        pids = dict(re.findall(r"started (\S+) \(pid (\d+)\)", "".join(lines)))
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, int(pids["router"])) == min(ours + 3, 19)
        assert os.getpriority(os.PRIO_PROCESS, int(pids["decode-0"])) == ours
        # Every service froze its startup heap before serving (pdserve/gc_heap.py).
        for service in ("router", "prefill-0", "decode-0"):
            assert "startup heap frozen" in Path(f"{tmp_path}/{service}.log").read_text(), service
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, "".join(lines)


@pytest.mark.parametrize("broker", ["stopped", "frozen"])
def test_worker_exits_on_sigterm_when_its_broker_is_unreachable(tmp_path: object, broker: str) -> None:
    """nats-py cannot drain while it reconnects, and waits long on a broker that does not answer
    (frozen: SIGSTOP); the worker must still close its client and exit within its own drain time."""
    nats = NatsServer()
    nats.start()
    log_path = Path(f"{tmp_path}/worker.log")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pdserve.cli", "worker", "--nats", nats.url, "--worker-id", "lonely"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "worker ready" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert "worker ready" in log_path.read_text()
        assert nats.process is not None
        if broker == "stopped":
            nats.stop()
            time.sleep(1.0)  # the client notices and starts reconnecting
        else:
            nats.process.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running 20 s after SIGTERM ({broker} broker):\n{log_path.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
        if nats.process is not None:
            nats.process.send_signal(signal.SIGCONT)
        nats.stop()
    assert proc.returncode == 0, log_path.read_text()


@pytest.mark.parametrize("spec", ["router=-5", "router=20", "router=x", "gateway=3", "router"])
def test_bad_nice_is_refused_before_anything_starts(spec: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "up", "--nice", spec], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "bad --nice entry" in proc.stderr
