"""A sweep stopped with SIGTERM (`timeout`, systemd, a cancelled CI job) stops the cluster it
started: the cluster runs in a session of its own, so nothing else would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_a_sweep_stops_its_cluster(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pdserve.cli", "bench", "sweep", "--target", "colocated:1",
            "--request-rates", "0.2", "--num-prompts", "50", "--num-warmups", "0", "--random-input-len", "8",
            "--random-output-len", "4", "--result-dir", str(tmp_path), "--disable-tqdm"]  # fmt: skip
    sweep = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert sweep.stdout is not None
    try:
        for line in sweep.stdout:
            if "healthy after" in line:
                break
        else:
            pytest.fail("the sweep's cluster never became healthy")
        up_log = (tmp_path / "logs" / "colocated-1w" / "up.log").read_text()
        pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", up_log)]
        assert len(pids) == 2, up_log  # router and worker
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=60) != 0
    finally:
        if sweep.poll() is None:
            sweep.kill()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in pids if alive(pid)]
    if left:  # do not leave it to the rest of the suite
        kill_process_groups_mentioning(str(tmp_path))
    assert not left, "the cluster outlived its sweep"


def kill_process_groups_mentioning(text: str) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
