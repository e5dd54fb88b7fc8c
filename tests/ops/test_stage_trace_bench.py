"""ops/bench_stage_trace.py: its patch still applies to the code it instruments (else the tool
rots unnoticed), and its analysis gives the exact gaps of a constructed trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops"))

import bench_stage_trace as tool  # noqa: E402


def test_patch_applies_to_this_checkout() -> None:
    argv = ["git", "apply", "-C1", "--check", str(tool.PATCH)]
    check = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, f"ops/stage_trace.patch no longer applies; refresh it (see its tool):\n{check.stderr}"


def test_analysis_of_a_constructed_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    lines = ["C0 1", "R_in 2", "C1 3", "MARK 10"]  # warm-up before MARK is left out
    # Three requests in the order C0 R_in W_msg C1, one with W_msg before R_in (left out).
    for start, (r_in, w_msg, c1) in zip((100, 200, 300), ((10_000, 30_000, 50_000), (20_000, 50_000, 90_000),
                                                            (30_000, 60_000, 100_000)), strict=True):  # fmt: skip
        lines += [f"C0 {start}", f"R_in {start + r_in}", f"W_msg {start + w_msg}", f"C1 {start + c1}"]
    lines += ["C0 1000", "W_msg 2000", "R_in 3000", "C1 4000"]
    trace.write_text("\n".join(lines) + "\n")
    result = tool.analyse(trace)
    assert result["requests"] == 4 and result["in_most_common_order"] == 3
    gaps = result["gaps"]
    assert isinstance(gaps, dict)
    assert list(gaps) == ["C0 -> R_in", "R_in -> W_msg", "W_msg -> C1"]
    assert gaps["C0 -> R_in"]["p50_us"] == 20.0  # median of 10, 20, 30 µs
    assert gaps["R_in -> W_msg"]["p50_us"] == 30.0  # 20, 30, 30
    assert gaps["W_msg -> C1"]["p50_us"] == 40.0  # 20, 40, 40
    assert result["total_p50_us"] == 90.0  # 50, 90, 100
