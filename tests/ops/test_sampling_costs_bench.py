"""ops/bench_sampling_costs.py runs end to end and reports every case (docs/benchmarks.md quotes it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_run_reports_every_case() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_sampling_costs.py"), "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    engine = dict(re.findall(r"^engine (\w+) .* ([\d.]+)x none$", result.stdout, re.MULTILINE))
    assert set(engine) == {"none", "logprobs", "top5", "top20", "penalties", "bias"} and engine["none"] == "1.00"
    prompts = dict(re.findall(r"^prompts (.+?)\s+median .* ([\d.]+)x plain$", result.stdout, re.MULTILINE))
    assert set(prompts) == {"plain", "scored k=1"} and prompts["plain"] == "1.00"
    grammars = re.findall(r"^grammar (\w+)\s+(greedy|sampled)\s+[\d.]+ ms/token\s+([\d.]+)x none$", result.stdout, re.M)
    assert {(name, mode) for name, mode, _ in grammars} == {
        (name, mode) for name in ("none", "json_object", "json_schema") for mode in ("greedy", "sampled")
    }
    router = re.findall(
        r"^router k=\s*(\d+): completions ([\d.]+) ms/token, chat ([\d.]+)", result.stdout, re.MULTILINE
    )
    assert [k for k, _, _ in router] == ["0", "5", "20"]
    assert float(router[-1][2]) > 0  # 64 tokens x 20 alternatives in the chat shape take measurable time


def test_bad_reps_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_sampling_costs.py"), "--reps", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--reps must be at least 1" in result.stderr
