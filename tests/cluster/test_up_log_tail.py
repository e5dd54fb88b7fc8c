"""`pdserve up` shows a failed service's last log lines: this run's only, when --log-dir is reused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pdserve.services.up import Child, _print_tail


def test_a_reused_log_shows_only_this_runs_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text("error: from the run before\n")
    child = Child("worker-0", [sys.executable, "-c", "print('error: from this run')"], log)
    child.start({})
    assert child.process is not None and child.process.wait(timeout=30) == 0
    assert child.log_file is not None
    child.log_file.close()
    _print_tail(child.log_path, child.log_start)
    err = capsys.readouterr().err
    assert "from this run" in err
    assert "from the run before" not in err
