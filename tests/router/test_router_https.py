"""HTTPS at the router (--ssl-keyfile, --ssl-certfile, --ssl-ca-certs, --ssl-cert-reqs): real TLS
handshakes with a throwaway CA, a real generation behind them, and clear refusals of bad
settings before anything starts."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pdserve.services.router import RouterServer
from pdserve.services.router.tls import ServerTls, parse_cert_reqs, server_tls
from router_helpers import MODEL, sse_data, streamed_text
from tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


async def serve(app: FastAPI, tls: ServerTls) -> AsyncIterator[str]:
    server = RouterServer(app, "127.0.0.1", 0, graceful_shutdown_s=2, tls=tls)
    task = asyncio.create_task(server.serve(handle_signals=False))
    await server.wait_started()
    yield f"https://127.0.0.1:{server.port}"
    server.stop()
    await task


@pytest.fixture
async def https_url(app: FastAPI, pki: Pki) -> AsyncIterator[str]:
    tls = server_tls(str(pki.server_key), str(pki.server_cert))
    assert tls is not None
    async for url in serve(app, tls):
        yield url


@pytest.fixture
async def mtls_url(app: FastAPI, pki: Pki) -> AsyncIterator[str]:
    tls = server_tls(str(pki.server_key), str(pki.server_cert), str(pki.ca), parse_cert_reqs("required"))
    assert tls is not None
    async for url in serve(app, tls):
        yield url


BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


async def test_generation_over_https(https_url: str, pki: Pki) -> None:
    async with httpx.AsyncClient(base_url=https_url, verify=client_context(pki.ca)) as client:
        plain = await client.post("/v1/completions", json=BODY)
        streamed = await client.post("/v1/completions", json={**BODY, "stream": True})
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"]["completion_tokens"] == 6
    assert streamed.status_code == 200
    assert streamed_text(sse_data(streamed.text)) == plain.json()["choices"][0]["text"]


async def test_plain_http_to_the_https_port_gets_no_answer(https_url: str) -> None:
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient() as client:
            await client.get(https_url.replace("https://", "http://") + "/health")


async def test_a_client_that_trusts_another_ca_refuses_the_server(https_url: str, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", ca_name="another CA")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        async with httpx.AsyncClient(verify=client_context(other.ca)) as client:
            await client.get(f"{https_url}/health")


async def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_ca(mtls_url: str, pki: Pki) -> None:
    trusted = client_context(pki.ca, pki.client_cert, pki.client_key)
    async with httpx.AsyncClient(base_url=mtls_url, verify=trusted) as client:
        answer = await client.post("/v1/completions", json=BODY)
    assert answer.status_code == 200, answer.text
    with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
        async with httpx.AsyncClient(base_url=mtls_url, verify=client_context(pki.ca)) as client:
            await client.get("/health")


def test_settings_are_loaded_and_checked(pki: Pki, tmp_path: Path) -> None:
    key, cert, ca = str(pki.server_key), str(pki.server_cert), str(pki.ca)
    assert server_tls(None, None) is None
    tls = server_tls(key, cert, ca, ssl.CERT_OPTIONAL)
    assert tls is not None and tls.uvicorn_options() == {
        "ssl_keyfile": key,
        "ssl_certfile": cert,
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_ca_certs": ca,
    }
    with pytest.raises(ValueError, match="needs both --ssl-certfile and --ssl-keyfile"):
        server_tls(key, None)
    with pytest.raises(ValueError, match="need HTTPS"):
        server_tls(None, None, ca)
    with pytest.raises(ValueError, match="give --ssl-ca-certs"):
        server_tls(key, cert, None, ssl.CERT_REQUIRED)
    with pytest.raises(ValueError, match="No such file"):
        server_tls(str(tmp_path / "missing.key"), cert)
    with pytest.raises(ValueError, match="does not load"):
        server_tls(str(pki.client_key), cert)  # a key that is not the certificate's
    with pytest.raises(ValueError, match="does not load"):
        server_tls(key, str(pki.server_key))  # a key where the certificate should be
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"--ssl-ca-certs .* does not load"):
        server_tls(key, cert, str(not_pem), ssl.CERT_REQUIRED)
    assert [parse_cert_reqs(v) for v in ("none", "OPTIONAL", "required", "0", "1", "2")] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="expected one of none, optional, required"):
        parse_cert_reqs("3")


def test_the_router_command_refuses_bad_tls_before_loading_anything(pki: Pki) -> None:
    argv = [sys.executable, "-m", "pdserve.cli", "router", "--ssl-keyfile", str(pki.client_key)]
    argv += ["--ssl-certfile", str(pki.server_cert), "--nats", "nats://127.0.0.1:1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--ssl-certfile" in done.stderr and "does not load" in done.stderr
    assert "Traceback" not in done.stderr
