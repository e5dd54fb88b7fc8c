"""Sweep targets and rates as written on the command line, and the `pdserve up` they start."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pdserve.bench.client import Endpoint
from pdserve.bench.command import parse_extra_body
from pdserve.bench.datasets import BenchRequest
from pdserve.bench.report import write_json
from pdserve.bench.sweep import Target, parse_rates, parse_target


def test_targets() -> None:
    assert parse_target("colocated:2") == Target("colocated-2w", "colocated", workers=2)
    assert parse_target("disaggregated:1:3@router=0;prefill=0;decode=1") == Target(
        "disagg-1p3d", "disaggregated", prefill=1, decode=3, pin="router=0;prefill=0;decode=1"
    )
    assert parse_target("small=disagg:1:1").label == "small"
    assert parse_target("vllm=http://10.0.0.2:8000/") == Target("vllm", url="http://10.0.0.2:8000")
    assert parse_target("https://example.com").label == "external"


@pytest.mark.parametrize(
    "bad",
    [
        "colocated", "colocated:1:2", "disagg:2", "colocated:0", "colocated:x", "tpu:1",
        "colocated:1@prefill=0", "disagg:1:1@worker=0", "colocated:1@router=4096", "colocated:1@router",
        "colocated:1@worker=1-0",
    ],
)  # fmt: skip
def test_bad_targets(bad: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(bad)


def test_up_argv_carries_mode_counts_pins_and_extra_flags(tmp_path: Path) -> None:
    target = parse_target("colocated:2@router=0;worker=0-1")
    argv = target.up_argv(8123, tmp_path, ["--model", "/m", "--dtype", "bfloat16"])
    assert argv[1:4] == ["-m", "pdserve.cli", "up"]
    tail = argv[4:]
    assert tail[:4] == ["--mode", "colocated", "--port", "8123"]
    assert "--workers" in tail and tail[tail.index("--workers") + 1] == "2"
    assert tail[tail.index("--pin") + 1] == "router=0;worker=0-1"
    assert tail[-4:] == ["--model", "/m", "--dtype", "bfloat16"]
    disagg = parse_target("disagg:2:3").up_argv(1, tmp_path, [])
    assert disagg[disagg.index("--prefill") + 1] == "2" and disagg[disagg.index("--decode") + 1] == "3"
    assert "--pin" not in disagg


def test_rates() -> None:
    assert parse_rates("1, 2.5,inf") == [1.0, 2.5, math.inf]
    for bad in ("", "0", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_rates(bad)


def test_json_has_no_bare_infinity(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "r.json", {"rate": math.inf, "rates": [1.0, math.inf]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "rate": "inf",
        "rates": [1.0, "inf"],
    }


def test_extra_body_is_merged_into_every_request() -> None:
    extra = parse_extra_body('{"return_token_ids": true, "temperature": 0.5}')
    endpoint = Endpoint("http://h", "m", ignore_eos=True, extra_body=extra)
    body = endpoint.body(BenchRequest([1, 2, 3], 3, 4))
    assert body["return_token_ids"] is True and body["temperature"] == 0.5
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 4 and body["ignore_eos"] is True
    assert parse_extra_body(None) == {} and parse_extra_body("") == {}
    for bad in ("[1]", "{not json", "3"):
        with pytest.raises(ValueError, match="--extra-body"):
            parse_extra_body(bad)
