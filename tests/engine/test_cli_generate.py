"""`pdserve generate` on the command line: output as the offline API gives it, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pdserve import LLM, SamplingParams


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdserve.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_prints_what_the_api_returns(model_dirs: dict[str, Path]) -> None:
    model = str(model_dirs["llama"])
    done = run("generate", "--model", model, "--max-tokens", "6", "--ignore-eos", "--json", "Hello", "World")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    expected = LLM(model).generate(["Hello", "World"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert [r["token_ids"] for r in records] == [o.token_ids for o in expected]


def test_generate_names_a_missing_model(tmp_path: Path) -> None:
    done = run("generate", "--model", str(tmp_path / "nope"), "Hello")
    assert done.returncode == 2
    assert "does not exist" in done.stderr
