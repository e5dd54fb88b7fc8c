"""The short chaos run, in CI: real processes, kill -9 of a decode and a prefill worker and a
nats-server restart while requests stream. `python tests/chaos/chaos_run.py` is the full run."""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_run import Outcome, classify_tokens, main


def test_chaos_short_run(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    status = main(["--requests", "24", "--window-s", "8", "--log-dir", str(tmp_path / "logs"), "--json", str(report)])
    text = report.read_text()
    assert '"lost": 0' in text and '"duplicated_or_dropped": 0' in text and '"leaked_blocks": 0' in text, text
    assert status == 0, text


@pytest.mark.parametrize(
    ("got", "verdict"),
    [
        ([1, 2, 3, 4], "same"),
        ([1, 2, 2, 3], "dup_or_drop"),  # a token repeated
        ([1, 3, 4, 5], "dup_or_drop"),  # a token skipped
        ([1, 2, 3], "dup_or_drop"),  # the end missing
        ([1, 2, 3, 4, 4], "dup_or_drop"),
        ([1, 2, 9, 8], "diverged"),  # another token won a near-tie
    ],
)
def test_classify_tokens(got: list[int], verdict: str) -> None:
    assert classify_tokens(got, [1, 2, 3, 4]) == verdict


def test_outcome_verdict() -> None:
    assert Outcome(sent=20, completed=19, failed_clear=1).ok()
    assert not Outcome(sent=20, completed=18, failed_clear=2).ok()  # under 95%
    assert not Outcome(sent=20, completed=20, leaked_blocks=1).ok()
    assert not Outcome(sent=20, completed=19, lost=1).ok()
