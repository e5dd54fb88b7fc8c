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


def test_max_model_len_ends_the_context(model_dirs: dict[str, Path]) -> None:
    model = str(model_dirs["llama"])
    args = ("generate", "--model", model, "--max-tokens", "500", "--ignore-eos", "--json")
    done = run(*args, "--max-model-len", "24", "Hello")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    prompt_len = len(LLM(model).tokenizer("Hello").input_ids)
    assert record["finish_reason"] == "length"
    assert prompt_len + len(record["token_ids"]) == 24


def test_max_model_len_beyond_the_model_or_the_pool_is_refused(model_dirs: dict[str, Path]) -> None:
    model = str(model_dirs["llama"])
    too_long = run("generate", "--model", model, "--max-model-len", "1000000", "Hello")
    assert too_long.returncode == 2
    assert "more than this model's context" in too_long.stderr
    small_pool = run("generate", "--model", model, "--num-kv-blocks", "2", "--max-model-len", "64", "Hello")
    assert small_pool.returncode == 2
    assert "does not fit the KV pool of 32 tokens" in small_pool.stderr and "--num-kv-blocks" in small_pool.stderr
