"""A short real run: `pdserve up --mode colocated` (started by the sweep's Cluster, as a subprocess, on the
built-in tiny model), then `pdserve bench` and `pdserve bench sweep` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pdserve.bench.sweep import Cluster, parse_target
from pdserve.cli import main

pytestmark = pytest.mark.e2e

PROMPTS = 8
OUTPUT_LEN = 8
WORKLOAD = ["--num-prompts", str(PROMPTS), "--random-input-len", "24", "--random-output-len", str(OUTPUT_LEN)]
WORKLOAD += ["--ignore-eos", "--disable-tqdm", "--seed", "3"]


def test_bench_and_sweep_against_pdserve_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Cluster(parse_target("colocated:1"), [], tmp_path / "logs") as cluster:
        result_file = tmp_path / "run.json"
        argv = ["bench", "--base-url", cluster.base_url, *WORKLOAD, "--request-rate", "40", "--num-warmups", "2"]
        argv += ["--goodput", "ttft:60000", "tpot:60000", "--save-detailed"]
        argv += ["--result-file", str(result_file), "--plot-dir", str(tmp_path / "plots")]
        assert main(argv) == 0

        # Every request refused (no such model): the summary says why, not just how many failed.
        argv = ["bench", "--base-url", cluster.base_url, *WORKLOAD, "--model", "no-such-model"]
        assert main(argv) == 1
        out = capsys.readouterr().out
        assert f"failed requests {PROMPTS}" in " ".join(out.split())
        assert f"failures, commonest first (1 distinct):\n  {PROMPTS} x HTTP 404" in out, out

        sweep_dir = tmp_path / "sweep"
        argv = ["bench", "sweep", "--target", f"here={cluster.base_url}", "--request-rates", "20,inf", *WORKLOAD]
        argv += ["--max-concurrency", "4", "--result-dir", str(sweep_dir)]
        assert main(argv) == 0

    run = json.loads(result_file.read_text())
    assert run["model"] == "pdserve-tiny"
    assert run["load"]["request_rate"] == 40.0 and run["load"]["num_warmups"] == 2
    m = run["metrics"]
    assert (m["completed"], m["failed"]) == (PROMPTS, 0)
    assert m["total_output_tokens"] == PROMPTS * OUTPUT_LEN  # ignore_eos: every token asked for
    assert m["total_input_tokens"] == sum(r["prompt_tokens"] for r in run["requests"])
    assert m["good_requests"] == PROMPTS  # SLOs of a minute: every request is good
    assert m["request_goodput"] == pytest.approx(m["request_throughput"])
    assert m["output_throughput"] == pytest.approx(PROMPTS * OUTPUT_LEN / m["duration_s"])
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = m[name]
        assert 0 <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"] < 60_000, name
    assert m["ttft"]["p50_ms"] > 0 and m["tpot"]["count"] == PROMPTS
    # Chunks may carry several tokens, never fewer than one.
    assert 0 < m["itl"]["count"] <= PROMPTS * (OUTPUT_LEN - 1)
    for r in run["requests"]:
        assert r["output_tokens"] == OUTPUT_LEN
        assert r["e2e_ms"] >= r["ttft_ms"]
        assert r["e2e_ms"] - r["ttft_ms"] == pytest.approx(sum(r["itl_ms"]), abs=1e-6)
        assert r["tpot_ms"] == pytest.approx(sum(r["itl_ms"]) / (OUTPUT_LEN - 1))
    assert (tmp_path / "plots" / "latency_cdf.png").stat().st_size > 0

    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(r["label"], r["load"]["request_rate"]) for r in sweep["runs"]] == [("here", 20.0), ("here", "inf")]
    assert all(r["metrics"]["completed"] == PROMPTS for r in sweep["runs"])
    # A new dataset seed per rate, so the second rate is not served from the prefix cache.
    assert [r["dataset"]["seed"] for r in sweep["runs"]] == [3, 4]
    table = (sweep_dir / "sweep.md").read_text()
    assert table.count("| here |") == 2
    for png in ("rates.png", "latency_cdf_rate_20.png", "latency_cdf_rate_inf.png"):
        assert (sweep_dir / png).stat().st_size > 0
