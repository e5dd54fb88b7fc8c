"""Entry points of the long-running services: load, connect, serve until SIGTERM, drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Coroutine
from typing import Any

import structlog
import torch
from pdserve import event_loop
from pdserve.cli_pool import kv_pool_options
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.gc_heap import freeze_startup_heap
from pdserve.log_setup import configure_logging
from pdserve.services.bus import BusOptions
from pdserve.services.colocated import ColocatedWorker
from pdserve.services.router.cors import CorsPolicy, cors_policy
from pdserve.services.router.tls import ServerTls, parse_cert_reqs, server_tls
from pdserve.services.worker_base import WorkerBase

log = structlog.get_logger("pdserve.service")


def router_http_options(args: argparse.Namespace) -> tuple[ServerTls | None, CorsPolicy | None]:
    """The gateway's HTTPS and CORS settings from its flags (`pdserve router` and `pdserve up`),
    loaded and checked; ValueError names the flag to fix."""
    cert_reqs = parse_cert_reqs(getattr(args, "ssl_cert_reqs", "none"))
    tls = server_tls(args.ssl_keyfile, args.ssl_certfile, getattr(args, "ssl_ca_certs", None), cert_reqs)
    cors = cors_policy(args.allowed_origins, args.allowed_methods, args.allowed_headers, args.allow_credentials)
    return tls, cors


def bus_options(args: argparse.Namespace) -> BusOptions:
    return BusOptions(
        url=args.nats,
        cluster=args.cluster,
        user=args.nats_user,
        password=args.nats_password,
        token=args.nats_token,
        nkey_seed_file=args.nats_nkey_seed,
        creds_file=args.nats_creds,
        tls_ca_file=args.nats_tls_ca,
        tls_cert_file=args.nats_tls_cert,
        tls_key_file=args.nats_tls_key,
    )


def model_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return str(args.served_model_name)
    return "pdserve-tiny" if args.model is None else str(args.model).rstrip("/").split("/")[-1]


def build_engine(args: argparse.Namespace) -> LLMEngine:
    threads = os.environ.get("PDSERVE_TORCH_THREADS")
    if threads:
        # Set by `pdserve up --pin`: one torch thread per pinned core, no oversubscription.
        torch.set_num_threads(int(threads))
    config = EngineConfig(
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        scheduling_policy=args.scheduling_policy,
        **kv_pool_options(args),
    )
    return LLMEngine.from_model(args.model, dtype=args.dtype, device=args.device, config=config, seed=args.seed)


def stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: the service then drains instead of dying mid-request."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


async def started_before_stop(start: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run a service's start-up unless SIGTERM comes first: start-up waits for NATS as long as it
    takes (services may start before the broker), and an operator stopping a service that never
    got its broker must not wait for it. False: stopped first, start-up cancelled."""
    starting = asyncio.ensure_future(start)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        stopping.cancel()
        starting.result()  # start-up's own error, if it failed
        return True
    # nats-py swallows a cancel that lands inside its cleanup between connect attempts, and
    # the connect loop then runs on; cancel again until the start-up task has really ended.
    while not starting.done():
        starting.cancel()
        await asyncio.wait({starting}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        starting.result()  # retrieved, so asyncio does not log it as never retrieved
    return False


async def serve_worker(role: str, args: argparse.Namespace) -> None:
    configure_logging(role, args.log_level)
    engine = build_engine(args)
    common = dict(
        model_name=model_name(args),
        worker_id=args.worker_id,
        heartbeat_s=args.heartbeat_s,
        max_waiting=args.max_waiting,
        drain_timeout_s=args.drain_timeout_s,
        router_timeout_s=args.router_timeout_s,
    )
    worker: WorkerBase
    if role == "prefill":
        from pdserve.services.prefill import PrefillWorker

        worker = PrefillWorker(engine, bus_options(args), **common)
    elif role == "decode":
        from pdserve.services.decode import DecodeWorker

        ucx_host = args.ucx_host
        if ucx_host == "auto":
            # In a container: publish the address other containers reach us at.
            ucx_host = socket.gethostbyname(socket.gethostname())
        worker = DecodeWorker(
            engine,
            bus_options(args),
            ucx_host=ucx_host,
            ucx_port=args.ucx_port,
            lease_s=args.kv_lease_s,
            transfer_failure_policy=args.transfer_failure_policy,
            **common,
        )
    else:
        worker = ColocatedWorker(engine, bus_options(args), **common)
    stop = stop_event()
    freeze_startup_heap()  # model and imports: no full GC pass walks them again (gc_heap.py)
    log.info("starting worker", role=role, event_loop=event_loop.name())
    if not await started_before_stop(worker.start(), stop):
        # Nothing was taken yet (the broker never answered, say): nothing to drain.
        log.warning("signal received before the worker was up; stopping")
        await worker.close()
        return
    await stop.wait()
    log.info("signal received; draining")
    await worker.drain()


async def serve_router(args: argparse.Namespace) -> None:
    configure_logging("router", args.log_level)
    from pdserve.models import builtin_model_path
    from pdserve.models.chat_template import load_chat_template
    from pdserve.models.generation_defaults import generation_defaults
    from pdserve.protocol import Subjects
    from pdserve.services.bus import connect, disconnect
    from pdserve.services.cluster_backend import ClusterBackend
    from pdserve.services.router.app import create_app
    from pdserve.services.router.server import run_router
    from pdserve.services.stream_follower import MigrationPolicy
    from transformers import AutoTokenizer

    path = args.model or builtin_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    defaults = generation_defaults(path, args.generation_config)
    chat_template = None if args.chat_template is None else load_chat_template(args.chat_template)
    if defaults:
        # as vLLM says it: requests that leave these out sample differently from OpenAI's defaults
        log.info("sampling defaults from the model's generation config", source=args.generation_config, **defaults)
    options = bus_options(args)
    nc = await connect(options, name="router")
    policy = MigrationPolicy(max_migrations=args.max_migrations, stall_timeout_s=args.stall_timeout_s)
    backend = ClusterBackend(nc, Subjects(options.cluster), policy=policy)
    await backend.start()
    api_keys = [k for k in (args.api_key or "").split(",") if k]
    tls, cors = router_http_options(args)
    app = create_app(
        backend,
        tokenizer,
        model_name=model_name(args),
        api_keys=api_keys or None,
        request_timeout_s=args.request_timeout_s,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        max_n=args.max_n,
        max_inflight=args.max_inflight,
        tool_call_parser=args.tool_call_parser,
        sampling_defaults=defaults,
        chat_template=chat_template,
        reasoning_parser=args.reasoning_parser,
        cors=cors,
    )
    freeze_startup_heap()  # imports and tokenizer: no full GC pass walks them again (gc_heap.py)
    scheme = "https" if tls is not None else "http"
    log.info(
        "router listening",
        url=f"{scheme}://{args.host}:{args.port}",
        cluster=options.cluster,
        event_loop=event_loop.name(),
        client_certs=tls.cert_reqs if tls is not None else None,
        cors_origins=list(cors.allow_origins) if cors is not None else None,
    )
    try:
        await run_router(app, args.host, args.port, tls=tls)
    finally:
        await backend.close()
        await disconnect(nc)
