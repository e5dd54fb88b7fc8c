"""The `pdserve` command line. Every flag can also be set as PDSERVE_<FLAG> in the environment."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from pdserve.bench.cli_args import add_bench_parser
from pdserve.cli_env import EnvDefaultsParser
from pdserve.cli_pool import kv_pool_options
from pdserve.cli_types import (
    byte_size,
    log_level,
    non_negative_int,
    non_negative_seconds,
    port,
    port_or_any,
    positive_int,
    positive_seconds,
    share,
)
from pdserve.errors import PdserveError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local Hugging Face model directory (default: built-in tiny)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--block-size", type=positive_int, default=16, help="KV block size in tokens")
    parser.add_argument("--num-kv-blocks", type=positive_int, default=None, help="KV pool size in blocks")
    parser.add_argument(
        "--kv-cache-memory-bytes",
        type=byte_size,
        default=None,
        help="KV pool size in bytes, e.g. 8G (default 1G; --num-kv-blocks wins)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=share,
        default=None,
        help="CUDA only: size the KV pool so the process uses this share of the GPU's memory, e.g. 0.9",
    )
    parser.add_argument("--max-num-batched-tokens", type=positive_int, default=2048, help="per-step token budget")
    parser.add_argument("--max-num-seqs", type=positive_int, default=256, help="most sequences per step")
    parser.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help="context length served, prompt plus output (default: the model's, capped by the KV pool)",
    )
    parser.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the KV of shared prompt prefixes (--no-enable-prefix-caching: off, as in vLLM)",
    )
    parser.add_argument(
        "--scheduling-policy",
        choices=["fcfs", "priority"],
        default="fcfs",
        help="fcfs: first come, first served; priority: by each request's priority (lower first), then arrival",
    )


def _generate(args: argparse.Namespace) -> int:
    from pdserve import LLM, SamplingParams

    llm = LLM(
        args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        scheduling_policy=args.scheduling_policy,
        **kv_pool_options(args),
    )
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    outputs = llm.generate(list(args.prompts), params, use_tqdm=len(args.prompts) > 1)
    for out in outputs:
        if args.json:
            record = {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason}
            print(json.dumps(record))
        else:
            print(out.text)
    return 0


def add_bus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--cluster", default="pdserve", help="cluster name; prefixes every subject")
    parser.add_argument("--nats-user", default=None, help="NATS user (with --nats-password)")
    parser.add_argument("--nats-password", default=None, help="NATS password")
    parser.add_argument("--nats-token", default=None, help="NATS auth token")
    parser.add_argument("--nats-nkey-seed", default=None, help="file holding an NKEY seed")
    parser.add_argument("--nats-creds", default=None, help="NATS .creds file (JWT + seed)")
    parser.add_argument("--nats-tls-ca", default=None, help="CA bundle for TLS to NATS")
    parser.add_argument("--nats-tls-cert", default=None, help="client certificate for TLS to NATS")
    parser.add_argument("--nats-tls-key", default=None, help="client key for TLS to NATS")
    parser.add_argument("--log-level", type=log_level, default="info", help="debug, info, warning, error")


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_bus_args(parser)
    parser.add_argument("--served-model-name", default=None, help="model name in heartbeats and the API")
    parser.add_argument("--worker-id", default=None, help="unique id (default: role-host-pid-random)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed for unseeded requests")
    parser.add_argument("--heartbeat-s", type=positive_seconds, default=1.0, help="heartbeat interval in seconds")
    parser.add_argument(
        "--max-waiting", type=non_negative_int, default=256, help="queued requests before refusing (429)"
    )
    parser.add_argument(
        "--drain-timeout-s", type=non_negative_seconds, default=30.0, help="on SIGTERM, wait this long for work"
    )
    parser.add_argument(
        "--router-timeout-s",
        type=non_negative_seconds,
        default=10.0,
        help="end the requests of a router silent this long (killed, crashed); 0: keep them to their deadline",
    )


# pdserve.services.router.tool_parsers.TOOL_CALL_PARSERS and reasoning.REASONING_PARSERS, named
# here so that reading the command line imports no service code (tests check they agree).
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral", "pythonic")
REASONING_PARSERS = ("deepseek_r1", "qwen3")


def add_router_limit_args(parser: argparse.ArgumentParser) -> None:
    """Backpressure and input limits of the gateway (docs/reliability.md)."""
    parser.add_argument(
        "--max-inflight", type=positive_int, default=1024, help="completion/chat requests served at once; more get 429"
    )
    parser.add_argument("--max-body-bytes", type=positive_int, default=4 << 20, help="larger request bodies get 413")
    parser.add_argument(
        "--max-prompt-tokens", type=positive_int, default=None, help="longer prompts get 400 (default: context)"
    )
    parser.add_argument(
        "--max-tokens-limit",
        type=positive_int,
        default=None,
        help="largest max_tokens a request may ask (default: context)",
    )
    parser.add_argument("--max-n", type=positive_int, default=8, help="most choices per prompt (n)")
    parser.add_argument(
        "--tool-call-parser",
        choices=TOOL_CALL_PARSERS,
        default=None,
        help="read the tool calls the model writes (tool_choice auto): hermes, llama3_json, mistral, pythonic",
    )
    parser.add_argument(
        "--reasoning-parser",
        choices=REASONING_PARSERS,
        default=None,
        help="return the model's <think> text as reasoning_content: deepseek_r1 (R1, thinking-only models), qwen3",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        help="chat template for /v1/chat/completions: a file, or the template text (default: the tokenizer's)",
    )
    parser.add_argument(
        "--generation-config",
        default="auto",
        help="sampling defaults for fields a request leaves out: auto (the model's generation_config.json), "
        "vllm (none: OpenAI's), or a folder holding a generation_config.json",
    )
    parser.add_argument(
        "--request-timeout-s", type=positive_seconds, default=600.0, help="requests fail with 504 after this"
    )


def add_router_http_args(parser: argparse.ArgumentParser, *, client_certs: bool = True) -> None:
    """HTTPS and CORS of the gateway, under vLLM's flag names (docs/http_api.md); checked when the
    command runs, before anything loads (runners.router_http_options)."""
    parser.add_argument("--ssl-keyfile", default=None, help="PEM private key; with --ssl-certfile, serve HTTPS only")
    parser.add_argument("--ssl-certfile", default=None, help="PEM certificate (chain) for HTTPS")
    if client_certs:
        parser.add_argument(
            "--ssl-ca-certs", default=None, help="PEM CA bundle that client certificates are checked against"
        )
        parser.add_argument(
            "--ssl-cert-reqs",
            default="none",
            help="client certificates: none (0), optional (1: checked when sent) or required (2: mutual TLS)",
        )
    parser.add_argument(
        "--allowed-origins",
        default=None,
        help="CORS: origins whose browser apps may call the API, comma-separated or a JSON list, * for any "
        "(default: none, no CORS headers)",
    )
    parser.add_argument("--allowed-methods", default=None, help="CORS: methods allowed (default: all)")
    parser.add_argument("--allowed-headers", default=None, help="CORS: request headers allowed (default: all)")
    parser.add_argument(
        "--allow-credentials", action="store_true", help="CORS: let browsers send cookies and HTTP auth"
    )


def _serve(role: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from pdserve import event_loop, gc_heap
        from pdserve.protocol import check_token
        from pdserve.services import bus, runners

        try:
            # Checked before the model loads: both become NATS subject tokens.
            check_token(args.cluster, "--cluster")
            bus.check_bus_options(runners.bus_options(args))  # missing credentials fail now, not never
            if getattr(args, "worker_id", None):
                check_token(args.worker_id, "--worker-id")
            if role == "router":
                runners.router_http_options(args)  # a bad certificate or origin, before the tokenizer loads
            event_loop.loop_factory()  # a bad PDSERVE_EVENT_LOOP is refused before the model loads
            gc_heap.freeze_enabled()  # and so is a bad PDSERVE_GC_FREEZE
        except ValueError as exc:
            raise PdserveError(str(exc)) from None
        if role == "router":
            event_loop.run(runners.serve_router(args))
        else:
            event_loop.run(runners.serve_worker(role, args))
        return 0

    return run


def _up(args: argparse.Namespace) -> int:
    from pdserve.services.up import run_up

    return run_up(args)


def build_parser() -> argparse.ArgumentParser:
    parser = EnvDefaultsParser(prog="pdserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=EnvDefaultsParser)

    gen = sub.add_parser("generate", help="generate text offline for one or more prompts")
    add_model_args(gen)
    gen.add_argument("prompts", nargs="+", help="prompt text")
    gen.add_argument("--max-tokens", type=positive_int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(func=_generate)

    router = sub.add_parser("router", help="the OpenAI-compatible HTTP gateway")
    add_bus_args(router)
    router.add_argument("--model", default=None, help="model directory (for the tokenizer and chat template)")
    router.add_argument("--served-model-name", default=None, help="model name in the API")
    router.add_argument("--host", default="127.0.0.1", help="address to listen on")
    router.add_argument("--port", type=port, default=8000, help="HTTP port")
    router.add_argument("--api-key", default=None, help="require this Bearer key (comma-separated for several)")
    add_router_limit_args(router)
    add_router_http_args(router)
    router.add_argument(
        "--max-migrations",
        type=non_negative_int,
        default=3,
        help="times a request may move after losing its worker (0: never)",
    )
    router.add_argument(
        "--stall-timeout-s",
        type=positive_seconds,
        default=10.0,
        help="a started stream with no token this long migrates",
    )
    router.set_defaults(func=_serve("router"))

    for role, text in (
        ("prefill", "a prefill worker: prompts in, first token out, KV pushed to a decode worker"),
        ("decode", "a decode worker: admits KV offers over NATS, receives KV over UCX, streams tokens"),
        ("worker", "a colocated worker: prefill and decode in one engine"),
    ):
        worker = sub.add_parser(role, help=text)
        add_worker_args(worker)
        if role == "decode":
            worker.add_argument(
                "--ucx-host", default="127.0.0.1", help="address published for KV pushes ('auto': this host's IP)"
            )
            worker.add_argument("--ucx-port", type=port_or_any, default=0, help="UCX listener port (0: any free)")
            worker.add_argument(
                "--transfer-failure-policy",
                choices=["recompute", "fail"],
                default="recompute",
                help="admitted KV that never arrives: prefill it here (recompute) or end the request (fail, 502)",
            )
            worker.add_argument(
                "--kv-lease-s", type=positive_seconds, default=10.0, help="blocks reserved for a KV push expire"
            )
        worker.set_defaults(func=_serve(role))

    up = sub.add_parser("up", help="a whole cluster on this machine: nats-server, router and workers")
    add_model_args(up)
    up.add_argument("--nats", default=None, help="use this NATS server instead of starting one")
    up.add_argument("--cluster", default="pdserve", help="cluster name; prefixes every subject")
    up.add_argument("--mode", choices=["disaggregated", "colocated"], default="disaggregated")
    up.add_argument("--prefill", type=positive_int, default=1, help="prefill workers (disaggregated)")
    up.add_argument("--decode", type=positive_int, default=1, help="decode workers (disaggregated)")
    up.add_argument("--workers", type=positive_int, default=1, help="colocated workers (--mode colocated)")
    up.add_argument("--host", default="127.0.0.1", help="gateway address")
    up.add_argument("--port", type=port, default=8000, help="gateway port")
    up.add_argument("--api-key", default=None, help="require this Bearer key at the gateway")
    up.add_argument(
        "--tool-call-parser", choices=TOOL_CALL_PARSERS, default=None, help="the gateway's --tool-call-parser"
    )
    up.add_argument("--max-inflight", type=positive_int, default=1024, help="the gateway's --max-inflight")
    up.add_argument("--generation-config", default="auto", help="the gateway's --generation-config")
    up.add_argument("--chat-template", default=None, help="the gateway's --chat-template")
    up.add_argument(
        "--reasoning-parser", choices=REASONING_PARSERS, default=None, help="the gateway's --reasoning-parser"
    )
    add_router_http_args(up, client_certs=False)  # up's own readiness probe sends no client certificate
    up.add_argument("--log-dir", default=None, help="where each process writes its log (default: a temp dir)")
    up.add_argument("--pin", default=None, help="CPU cores per process, e.g. 'router=0;prefill=0;decode=1'")
    up.add_argument(
        "--nice",
        default=None,
        help="lower priority (niceness 0-19) per role, e.g. 'router=10': on cores the workers share with "
        "the router, the engine's threads keep running while the router waits its turn (docs/benchmarks.md)",
    )
    up.add_argument("--log-level", type=log_level, default="info", help="debug, info, warning, error")
    up.set_defaults(func=_up)

    add_bench_parser(sub)  # `pdserve bench` and `pdserve bench sweep` (pdserve.bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PdserveError as exc:
        print(f"pdserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
