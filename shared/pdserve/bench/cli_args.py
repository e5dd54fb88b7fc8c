"""Flags of `pdserve bench` and `pdserve bench sweep`, named as vLLM's `bench serve` names them
where it has the same knob. Kept free of heavy imports: the CLI builds every parser at startup."""

from __future__ import annotations

import argparse
from typing import Any

from pdserve.cli_types import non_negative_float, positive_int, positive_seconds


def add_bench_parser(sub: Any) -> None:
    """Registers `bench` (one run against a URL) and `bench sweep` on the `pdserve` subparsers."""
    bench = sub.add_parser("bench", help="load-test an OpenAI-compatible endpoint (pdserve, vLLM, ...)")
    bench.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root, without /v1")
    bench.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    bench.add_argument("--result-file", default=None, help="write the results here as JSON")
    bench.add_argument("--label", default=None, help="name of this run in tables and plots (default: the URL)")
    _add_workload_args(bench)
    bench.set_defaults(func=_run("run_bench"))

    nested = bench.add_subparsers(dest="bench_command", parser_class=type(bench))
    sweep = nested.add_parser("sweep", help="targets x request rates; starts and stops pdserve clusters itself")
    sweep.add_argument(
        "--target",
        action="append",
        required=True,
        help="[LABEL=]colocated:K[@PIN], [LABEL=]disaggregated:P:D[@PIN] or [LABEL=]http://host:port; "
        "PIN is `pdserve up --pin` syntax, e.g. 'router=0;prefill=0;decode=1'; repeat for more targets",
    )
    sweep.add_argument("--request-rates", default="1,2,4,inf", help="comma-separated requests/s; inf: all at once")
    sweep.add_argument("--up-args", default="", help="extra `pdserve up` flags for every cluster, e.g. '--model DIR'")
    sweep.add_argument("--result-dir", default="bench-sweep", help="sweep.json, sweep.md, cluster logs and plots")
    # Each cluster starts cold, so a sweep warms every target up unless told otherwise.
    _add_workload_args(sweep, num_warmups=4)
    sweep.set_defaults(func=_run("run_sweep"))


def _add_workload_args(p: argparse.ArgumentParser, num_warmups: int = 0) -> None:
    # --model's dest is served_model_name so that PDSERVE_SERVED_MODEL_NAME, which names the model
    # a cluster serves, is also what the benchmark asks for, while PDSERVE_MODEL (a directory) is not.
    p.add_argument(
        "--model",
        dest="served_model_name",
        metavar="NAME",
        default=None,
        help="model name (default: first of /v1/models)",
    )
    p.add_argument("--endpoint", default="/v1/completions", help="/v1/completions or /v1/chat/completions")
    p.add_argument("--api-key", default=None, help="Bearer key (default: $OPENAI_API_KEY)")
    p.add_argument("--tokenizer", default=None, help="Hugging Face tokenizer directory: send text prompts")
    p.add_argument("--tokenizer-free", action="store_true", help="send token-id prompts even with --tokenizer")
    p.add_argument("--vocab-size", type=positive_int, default=None, help="random token ids below this (default 256)")
    p.add_argument("--dataset-name", choices=["random", "sharegpt", "prefix"], default="random")
    p.add_argument("--num-prompts", type=int, default=100, help="measured requests per run")
    p.add_argument("--random-input-len", type=positive_int, default=1024, help="prompt tokens (prefix: suffix tokens)")
    p.add_argument("--random-output-len", type=positive_int, default=128, help="output tokens (max_tokens)")
    p.add_argument("--random-range-ratio", type=float, default=0.0, help="lengths uniform in len*(1±r)")
    p.add_argument("--prefix-len", type=int, default=256, help="shared prefix tokens (--dataset-name prefix)")
    p.add_argument("--num-prefixes", type=int, default=4, help="distinct shared prefixes (--dataset-name prefix)")
    p.add_argument("--sharegpt-output-len", type=positive_int, default=None, help="fixed output length for sharegpt")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals: 1 Poisson, inf fixed")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    p.add_argument("--num-warmups", type=int, default=num_warmups, help="unmeasured requests sent first")
    p.add_argument("--seed", type=int, default=0, help="seeds the dataset and the arrivals")
    p.add_argument("--goodput", nargs="+", default=None, help="SLOs in ms, e.g. ttft:500 tpot:50 (e2e:MS too)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate the requested output length")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="sampling temperature")
    p.add_argument(
        "--extra-body",
        default=None,
        metavar="JSON",
        help="a JSON object merged into every request body, e.g. '{\"return_token_ids\": true}'",
    )
    p.add_argument("--request-timeout", type=positive_seconds, default=600.0, help="seconds before a request fails")
    p.add_argument("--save-detailed", action="store_true", help="add every request's latencies to the JSON")
    p.add_argument("--plot-dir", default=None, help="write PNG plots here")
    p.add_argument("--bench-cores", default=None, help="pin this load generator to these cores, e.g. 3 or 2-3")
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bar")


def _run(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from pdserve.bench import command

        return int(getattr(command, name)(args))

    return run
