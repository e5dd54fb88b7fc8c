"""Prefill interference: do long prompts arriving while short requests decode hurt their TPOT?

    python ops/bench_interference.py                       # 56M Llama bf16, both cluster modes
    python ops/bench_interference.py --model DIR --dtype bfloat16 --out results/interference

For each mode it starts `pdserve up` (colocated: one worker on both cores; disaggregated:
one prefill worker on core 0 and one decode worker on core 1), then offers two loads at once
with `pdserve bench`'s runner:

- *short*: requests of `--short-input` tokens and `--short-output` output tokens, kept
  `--short-concurrency` in flight: the decoding population whose TPOT we watch;
- *long*: `--long-input`-token prompts with `--long-output` output tokens, Poisson at
  `--long-rate` per second: the prefill work that interferes.

It prints, and writes as JSON and Markdown, the short requests' TPOT and ITL (p50, p99) and the
long requests' TTFT, per mode, and the ratio disaggregated / colocated of the short p99 TPOT.
In a colocated engine a long prompt's prefill shares steps with the decodes (chunked under the
token budget), so decode steps stretch; a disaggregated decode worker never runs a prefill.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

from pdserve.bench.client import Endpoint
from pdserve.bench.datasets import DatasetSpec, make_dataset
from pdserve.bench.runner import BenchResult, LoadSpec, benchmark
from pdserve.bench.sweep import Cluster, Target

MODES = {
    "colocated": Target("colocated", "colocated", workers=1, pin="router=0;worker=0-1"),
    "disaggregated": Target("disaggregated", "disaggregated", prefill=1, decode=1, pin="router=0;prefill=0;decode=1"),
}


async def measure(base_url: str, model: str, args: argparse.Namespace) -> tuple[BenchResult, BenchResult]:
    endpoint = Endpoint(base_url, model, ignore_eos=True)
    short_spec = DatasetSpec(
        num_prompts=args.short_requests, input_len=args.short_input, output_len=args.short_output, seed=1
    )
    long_spec = DatasetSpec(
        num_prompts=args.long_requests, input_len=args.long_input, output_len=args.long_output, seed=2
    )
    warm = make_dataset(replace(short_spec, num_prompts=4, seed=9))
    await benchmark("warm-up", endpoint, short_spec, warm, LoadSpec(), progress=False)
    short = benchmark(
        "short",
        endpoint,
        short_spec,
        make_dataset(short_spec),
        LoadSpec(max_concurrency=args.short_concurrency),
        progress=False,
    )
    # Long prompts start once the short population is decoding, and stop before it drains.
    long = benchmark(
        "long",
        endpoint,
        long_spec,
        make_dataset(long_spec),
        LoadSpec(request_rate=args.long_rate, seed=3),
        progress=False,
    )

    async def delayed_long() -> BenchResult:
        await asyncio.sleep(args.long_delay_s)
        return await long

    short_result, long_result = await asyncio.gather(short, delayed_long())
    return short_result, long_result


def summary(mode: str, short: BenchResult, long: BenchResult) -> dict[str, object]:
    s, lg = short.metrics, long.metrics
    return {
        "mode": mode,
        "short_completed": s.completed,
        "short_failed": s.failed,
        "short_tpot_p50_ms": s.tpot.p50_ms,
        "short_tpot_p99_ms": s.tpot.p99_ms,
        "short_itl_p99_ms": s.itl.p99_ms,
        "short_output_tok_s": s.output_throughput,
        "long_completed": lg.completed,
        "long_failed": lg.failed,
        "long_ttft_p50_ms": lg.ttft.p50_ms,
        "long_ttft_p99_ms": lg.ttft.p99_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the 56M benchmark Llama)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--modes", default="colocated,disaggregated")
    parser.add_argument("--short-requests", type=int, default=48)
    parser.add_argument("--short-input", type=int, default=64)
    parser.add_argument("--short-output", type=int, default=128)
    parser.add_argument("--short-concurrency", type=int, default=8)
    parser.add_argument("--long-requests", type=int, default=8)
    parser.add_argument("--long-input", type=int, default=1024)
    parser.add_argument("--long-output", type=int, default=4)
    parser.add_argument("--long-rate", type=float, default=1.0, help="long prompts per second (Poisson)")
    parser.add_argument("--long-delay-s", type=float, default=2.0, help="start the long prompts this much later")
    parser.add_argument("--out", default="results/interference")
    args = parser.parse_args(argv)

    model = args.model
    if model is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_offline import bench_model_path
        from pdserve.models.builtin import default_cache_dir

        model = str(bench_model_path(default_cache_dir()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        target = MODES[mode]
        with Cluster(target, ["--model", model, "--dtype", args.dtype], out / "logs" / mode) as cluster:
            print(f"{mode}: up at {cluster.base_url}; measuring", flush=True)
            short, long = asyncio.run(measure(cluster.base_url, Path(model).name, args))
        row = summary(mode, short, long)
        rows.append(row)
        print(json.dumps(row), flush=True)
    by_mode = {str(r["mode"]): r for r in rows}
    report: dict[str, object] = {"args": vars(args), "rows": rows}
    if {"colocated", "disaggregated"} <= set(by_mode):
        ratio = float(by_mode["disaggregated"]["short_tpot_p99_ms"]) / float(  # type: ignore[arg-type]
            by_mode["colocated"]["short_tpot_p99_ms"]  # type: ignore[arg-type]
        )
        report["p99_tpot_ratio_disagg_over_colocated"] = ratio
        print(f"short-request p99 TPOT, disaggregated / colocated: {ratio:.2f} (target <= 0.5)")
    (out / "interference.json").write_text(json.dumps(report, indent=2))
    header = (
        "| mode | short TPOT p50 | short TPOT p99 | short ITL p99 | short out tok/s | long TTFT p50 | long TTFT p99 |"
    )
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['short_tpot_p50_ms']:.1f} ms | {r['short_tpot_p99_ms']:.1f} ms | "
            f"{r['short_itl_p99_ms']:.1f} ms | {r['short_output_tok_s']:.0f} | {r['long_ttft_p50_ms']:.0f} ms | "
            f"{r['long_ttft_p99_ms']:.0f} ms |"
        )
    (out / "interference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
