"""ops/bench_grammar_vocab.py runs end to end and reports every case (docs/benchmarks.md quotes it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_run_reports_every_case() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_grammar_vocab.py"), "--vocab", "2000", "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert re.search(r"^vocabulary: \d+ tokens$", result.stdout, re.MULTILINE)
    rows = re.findall(
        r"^(json_object|json_schema): (\d+) of (\d+) tokens allowed; .* every token checked ([\d.]+) ms, "
        r"mask built ([\d.]+) ms, mask cached ([\d.]+) ms; first candidate allowed ([\d.]+) ms$",
        result.stdout,
        re.MULTILINE,
    )
    assert [r[0] for r in rows] == ["json_object", "json_schema"], result.stdout
    for _, allowed, vocab, *_ in rows:
        assert 0 < int(allowed) < int(vocab)


def test_bad_arguments_are_clear_errors() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_grammar_vocab.py"), "--vocab", "10"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--vocab must be at least 1000" in result.stderr
