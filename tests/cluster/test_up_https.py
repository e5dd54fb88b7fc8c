"""`pdserve up` with the gateway's HTTPS and CORS flags: they reach the router it starts, bad
ones stop it before anything starts, and a whole cluster comes up on HTTPS and serves."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pdserve.cli import build_parser
from pdserve.services.local_broker import free_port
from pdserve.services.up import plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))
from tls_certs import make_pki
from up_process import pdserve_up


def test_the_flags_reach_the_router(tmp_path: Path) -> None:
    flags = ["--ssl-keyfile", "k.pem", "--ssl-certfile", "c.pem", "--allowed-origins", "https://a.example"]
    args = build_parser().parse_args(["up", *flags, "--allowed-headers", "content-type", "--allow-credentials"])
    router = next(child for child in plan(args, "nats://127.0.0.1:4222", tmp_path) if child.name == "router").argv
    pairs = {router[i]: router[i + 1] for i in range(len(router) - 1) if router[i].startswith("--ssl")}
    assert pairs == {"--ssl-keyfile": "k.pem", "--ssl-certfile": "c.pem"}
    assert router[router.index("--allowed-origins") + 1] == "https://a.example"
    assert router[router.index("--allowed-headers") + 1] == "content-type"
    assert "--allow-credentials" in router and "--allowed-methods" not in router
    plain = build_parser().parse_args(["up"])
    router = next(child for child in plan(plain, "nats://127.0.0.1:4222", tmp_path) if child.name == "router").argv
    assert not [flag for flag in router if flag.startswith(("--ssl", "--allow"))]


def test_bad_flags_stop_up_before_anything_starts(tmp_path: Path) -> None:
    for flags, message in (
        (["--ssl-keyfile", str(tmp_path / "missing.key")], "needs both --ssl-certfile and --ssl-keyfile"),
        (["--allowed-origins", "example.com"], "is not an origin"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pdserve.cli", "up", "--log-dir", str(tmp_path / "logs"), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert "starting nats-server" not in done.stdout


@pytest.mark.timeout(300)
def test_a_cluster_serves_over_https(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    args = ["--mode", "colocated", "--port", str(port), "--log-dir", str(tmp_path / "logs"), "--log-level", "warning"]
    args += ["--ssl-keyfile", str(pki.server_key), "--ssl-certfile", str(pki.server_cert)]
    with pdserve_up(args, env={"PDSERVE_TORCH_THREADS": "1"}) as up:
        assert f"OpenAI API at https://127.0.0.1:{port}/v1" in up.ready_line
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        body = {"prompt": "hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
        answer = httpx.post(f"https://127.0.0.1:{port}/v1/completions", json=body, verify=trusted, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 5
