"""ops/disconnect_storm.py against a real 1P:1D `pdserve up` (nats-server, router, prefill and
decode processes, UCX): most clients leave early, and afterwards no worker runs a request or holds
a KV block, no answer is a 5xx, and no KV push was lost for good (a push refused for a cancelled
request once closed the UCX connection and failed every push queued behind it; the decode worker
then recomputed each of those when its lease expired)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pdserve.services.local_broker import free_port
from up_process import pdserve_up

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_a_disconnect_storm_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    with pdserve_up(["--port", str(port), "--log-dir", str(logs), "--log-level", "warning"]):
        storm = [sys.executable, str(ROOT / "ops" / "disconnect_storm.py"), "--url", f"http://127.0.0.1:{port}"]
        done = subprocess.run([*storm, "--requests", "150", "--seed", "3"], capture_output=True, text=True, timeout=240)
        result = json.loads(done.stdout)
        assert done.returncode == 0 and result["ok"], result
        assert result["outcomes"].get("left early", 0) > 50  # it did storm
        decode_log = (logs / "decode-0.log").read_text()
        assert "kv lost; recomputing" not in decode_log
