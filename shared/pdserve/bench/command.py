"""`pdserve bench` and `pdserve bench sweep`: flags in, runs, results and plots out."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from pdserve.bench.client import Endpoint, new_http_client, served_model
from pdserve.bench.datasets import BenchRequest, DatasetSpec, as_text, make_dataset
from pdserve.bench.metrics import parse_goodput
from pdserve.bench.report import format_result, sweep_table, write_json
from pdserve.bench.runner import BenchResult, LoadSpec, benchmark
from pdserve.bench.sweep import Cluster, Target, parse_rates, parse_target, sigterm_as_interrupt
from pdserve.cpu_cores import parse_cores, unknown_cores
from pdserve.errors import PdserveError

DEFAULT_VOCAB_SIZE = 256  # ids every model has: the byte range of byte-level tokenizers
WARMUP_SEED_OFFSET = 1_000_003  # warm-up prompts differ from measured ones: no prefix-cache head start


class BenchError(PdserveError):
    """A benchmark cannot run as asked: bad flags, or a server that does not answer."""


def run_bench(args: argparse.Namespace) -> int:
    """One run against --base-url; prints the summary, writes --result-file and --plot-dir."""
    try:
        _pin_self(args.bench_cores)
        slos = parse_goodput(args.goodput)
        check_outputs(args.result_file, args.plot_dir)  # before the run, so its results are never lost
        if args.tokenizer:
            _tokenizer(args.tokenizer)
        load = _load_spec(args, args.request_rate)
        result = asyncio.run(_bench_once(args, args.base_url, args.label or args.base_url, load, slos, args.seed))
    except (ValueError, httpx.HTTPError) as exc:
        raise BenchError(str(exc)) from exc
    print(format_result(result), flush=True)
    if args.result_file:
        print(f"results: {write_json(args.result_file, result.to_dict(args.save_detailed))}")
    if args.plot_dir:
        from pdserve.bench.plots import plot_latency_cdfs

        print(f"plot: {plot_latency_cdfs([result], Path(args.plot_dir) / 'latency_cdf.png', result.label)}")
    return 0 if result.metrics.completed else 1


def run_sweep(args: argparse.Namespace) -> int:
    """Every --target at every rate of --request-rates; clusters are started and stopped here."""
    try:
        _pin_self(args.bench_cores)
        slos = parse_goodput(args.goodput)
        parse_extra_body(args.extra_body)  # refused before any cluster starts
        targets = [parse_target(spec) for spec in args.target]
        rates = parse_rates(args.request_rates)
        up_args = shlex.split(args.up_args)
        _writable_dir(Path(args.result_dir), "--result-dir")
        check_outputs(None, args.plot_dir)
        if args.tokenizer:
            _tokenizer(args.tokenizer)
    except ValueError as exc:
        raise BenchError(str(exc)) from exc
    if len({t.label for t in targets}) != len(targets):
        raise BenchError("two targets have the same label; name them with LABEL=...")
    out_dir = Path(args.result_dir)
    results: list[BenchResult] = []
    with sigterm_as_interrupt():
        for target in targets:
            try:
                results += _sweep_target(args, target, rates, slos, up_args, out_dir)
            except (RuntimeError, ValueError, httpx.HTTPError) as exc:
                raise BenchError(f"{target.label}: {exc}") from exc
            _write_sweep(results, out_dir, detailed=args.save_detailed)
    table = sweep_table(results)
    print(table)
    plot_dir = Path(args.plot_dir or out_dir)
    from pdserve.bench.plots import plot_latency_cdfs, plot_rate_curves

    plot_rate_curves(results, plot_dir / "rates.png")
    for rate in rates:
        at_rate = [r for r in results if r.load.request_rate == rate]
        plot_latency_cdfs(at_rate, plot_dir / f"latency_cdf_rate_{rate:g}.png", f"latency CDFs at {rate:g} req/s")
    print(f"results, table and plots in {out_dir}" + ("" if plot_dir == out_dir else f" and {plot_dir}"))
    return 0 if all(r.metrics.completed for r in results) else 1


def _sweep_target(
    args: argparse.Namespace,
    target: Target,
    rates: list[float],
    slos: dict[str, float],
    up_args: list[str],
    out_dir: Path,
) -> list[BenchResult]:
    results: list[BenchResult] = []

    def measure(base_url: str) -> None:
        for i, rate in enumerate(rates):
            # A new seed per rate: the same prompts again would be served from the prefix cache.
            warmups = args.num_warmups if i == 0 else 0
            load = replace(_load_spec(args, rate), num_warmups=warmups)
            result = asyncio.run(_bench_once(args, base_url, target.label, load, slos, args.seed + i))
            print(format_result(result), flush=True)
            results.append(result)

    if target.url is not None:
        measure(target.url)
        return results
    cluster = Cluster(target, up_args, out_dir / "logs" / target.label)
    print(f"sweep: starting {target.label}: {shlex.join(cluster.argv)}", flush=True)
    started = time.monotonic()
    with cluster:
        print(f"sweep: {target.label} healthy after {time.monotonic() - started:.1f} s", flush=True)
        measure(cluster.base_url)
    return results


def _write_sweep(results: list[BenchResult], out_dir: Path, detailed: bool) -> None:
    # Written after every target, so a sweep that fails half-way keeps what it measured.
    write_json(out_dir / "sweep.json", {"runs": [r.to_dict(detailed) for r in results]})
    (out_dir / "sweep.md").write_text(sweep_table(results))


async def _bench_once(
    args: argparse.Namespace, base_url: str, label: str, load: LoadSpec, slos: dict[str, float], seed: int
) -> BenchResult:
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    model = args.served_model_name
    if model is None:
        async with new_http_client(30.0) as client:
            model = await served_model(client, base_url, api_key)
    endpoint = Endpoint(
        base_url,
        model,
        path=args.endpoint,
        api_key=api_key,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        extra_body=parse_extra_body(args.extra_body),
    )
    spec = _dataset_spec(args, seed)
    requests = _requests(args, spec)
    warmups = []
    if load.num_warmups:
        warmups = _requests(args, replace(spec, num_prompts=load.num_warmups, seed=seed + WARMUP_SEED_OFFSET))
    return await benchmark(
        label, endpoint, spec, requests, load, slos_ms=slos, warmup_requests=warmups,
        timeout_s=args.request_timeout, progress=not args.disable_tqdm,
    )  # fmt: skip


def parse_extra_body(text: str | None) -> dict[str, Any]:
    """--extra-body: a JSON object whose fields are added to (or replace) every request's fields."""
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--extra-body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {text!r}")
    return body


def _dataset_spec(args: argparse.Namespace, seed: int) -> DatasetSpec:
    return DatasetSpec(
        name=args.dataset_name,
        num_prompts=args.num_prompts,
        input_len=args.random_input_len,
        output_len=args.random_output_len,
        range_ratio=args.random_range_ratio,
        vocab_size=args.vocab_size or _tokenizer_vocab(args) or DEFAULT_VOCAB_SIZE,
        prefix_len=args.prefix_len,
        prefix_groups=args.num_prefixes,
        sharegpt_output_len=args.sharegpt_output_len,
        seed=seed,
    )


def _load_spec(args: argparse.Namespace, rate: float) -> LoadSpec:
    if math.isnan(rate):
        raise ValueError("request rate must be a number or inf")
    return LoadSpec(rate, args.burstiness, args.max_concurrency, args.num_warmups, args.seed)


def _requests(args: argparse.Namespace, spec: DatasetSpec) -> list[BenchRequest]:
    requests = make_dataset(spec)
    if args.tokenizer and not args.tokenizer_free:
        return as_text(requests, _tokenizer(args.tokenizer))
    return requests


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: str) -> Any:
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise ValueError(f"--tokenizer {path}: not a directory; give a local Hugging Face tokenizer directory")
        try:
            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # transformers raises many types; all mean "no tokenizer here"
            raise ValueError(f"--tokenizer {path}: no tokenizer loads from it ({type(e).__name__}: {e})") from None
    return _TOKENIZERS[path]


def check_outputs(result_file: str | None, plot_dir: str | None) -> None:
    """ValueError unless --result-file and --plot-dir can be written (their folders are created)."""
    if result_file:
        target = Path(result_file)
        if target.is_dir():
            raise ValueError(f"--result-file {result_file} is a directory; give a file name")
        _writable_dir(target.parent, "--result-file")
    if plot_dir:
        _writable_dir(Path(plot_dir), "--plot-dir")


def _writable_dir(folder: Path, flag: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag}: cannot create {folder} ({e.strerror or e})") from None
    try:  # a real write: permission bits say nothing to root, and /proc or a read-only mount refuse anyway
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write in {folder} ({e.strerror or e})") from None


def _tokenizer_vocab(args: argparse.Namespace) -> int | None:
    return len(_tokenizer(args.tokenizer)) if args.tokenizer else None


def _pin_self(spec: str | None) -> None:
    """'2-3' or '0,2' -> this process runs on those cores only (so it does not steal the
    cores a pinned cluster was given)."""
    if not spec:
        return
    try:
        cores = parse_cores(spec)
    except ValueError:
        raise ValueError(f"bad --bench-cores {spec!r}; expected cores like 3, 2-3 or 0,2") from None
    if missing := unknown_cores(cores):
        raise ValueError(f"bad --bench-cores {spec!r}: core(s) {missing} are not online here")
    try:
        os.sched_setaffinity(0, cores)
    except OSError as e:
        raise ValueError(f"cannot run on --bench-cores {spec!r}: {e.strerror or e}") from None
