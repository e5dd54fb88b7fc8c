"""What `pdserve bench` refuses before it sends a request: outputs it could not write (the run's
results would be lost at the end), a tokenizer that does not load, an SLO given twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve.bench.command import _tokenizer, check_outputs
from pdserve.bench.metrics import parse_goodput
from pdserve.cli import main


def test_outputs_that_cannot_be_written(tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(ValueError, match="--plot-dir: cannot create"):
        check_outputs(None, str(a_file))
    with pytest.raises(ValueError, match="is a directory"):
        check_outputs(str(tmp_path), None)
    with pytest.raises(ValueError, match="--result-file: cannot"):
        check_outputs(str(a_file / "run.json"), None)
    check_outputs(str(tmp_path / "new" / "run.json"), str(tmp_path / "plots"))  # created, fine
    assert (tmp_path / "new").is_dir() and (tmp_path / "plots").is_dir()


def test_tokenizer_that_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        _tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no tokenizer loads from it"):
        _tokenizer(str(tmp_path))


def test_slo_given_twice() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_goodput(["ttft:10", "tpot:5", "ttft:20"])


def test_refused_before_any_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, but the refusal comes first.
    argv = ["bench", "--base-url", "http://127.0.0.1:9", "--result-file", str(tmp_path), "--disable-tqdm"]
    assert main(argv) == 2
    assert "is a directory" in capsys.readouterr().err
