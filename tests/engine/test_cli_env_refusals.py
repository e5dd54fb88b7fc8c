"""A bad tuning switch in the environment stops a service before it loads anything, with a
message naming the variable and what it takes, and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("role", "variable", "value", "message"),
    [
        ("router", "PDSERVE_EVENT_LOOP", "tokio", "PDSERVE_EVENT_LOOP must be one of"),
        ("worker", "PDSERVE_GC_FREEZE", "maybe", "PDSERVE_GC_FREEZE must be 0 or 1"),
    ],
)
def test_a_bad_value_is_refused_before_anything_loads(role: str, variable: str, value: str, message: str) -> None:
    env = {variable: value, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "pdserve.cli", role, "--nats", "nats://127.0.0.1:1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
