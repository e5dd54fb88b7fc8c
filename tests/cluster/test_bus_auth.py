"""Broker credentials, against a real nats-server that requires them: an NKEY user connects with
its seed file (`--nats-nkey-seed`, which needs the nkeys package) and a token user with its token,
and what can never connect (missing files, a wrong scheme) is refused before a service starts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import nats
import nats.errors
import nkeys
import pytest
from pdserve.services.bus import BusOptions, check_bus_options, connect, disconnect
from pdserve.services.local_broker import free_port, local_broker_argv, nats_server_binary, wait_for_broker


def user_nkey(tmp_path: Path) -> tuple[Path, str]:
    """A fresh NKEY user: its seed file and its public key."""
    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    return seed_file, nkeys.from_seed(bytearray(seed)).public_key.decode()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nats-server accepting only the NKEY user or the token user; (url, seed file)."""
    seed_file, public = user_nkey(tmp_path)
    conf = tmp_path / "nats.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    argv = [*local_broker_argv(nats_server_binary(), tmp_path), "-c", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = wait_for_broker(proc, tmp_path, 10)
        assert url is not None, "nats-server did not start"
        yield url, seed_file
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_nkey_user_connects_and_round_trips(auth_server: tuple[str, Path]) -> None:
    url, seed_file = auth_server
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # the server does require it
        await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    options = BusOptions(url=url, nkey_seed_file=str(seed_file))
    check_bus_options(options)
    nc = await connect(options, name="auth-test")
    try:
        sub = await nc.subscribe("auth.check")
        await nc.publish("auth.check", b"signed in")
        assert (await sub.next_msg(timeout=5)).data == b"signed in"
    finally:
        await disconnect(nc)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (BusOptions(nkey_seed_file="/nonexistent/user.nk"), "--nats-nkey-seed /nonexistent/user.nk: No such file"),
        (BusOptions(creds_file="/nonexistent/user.creds"), "--nats-creds /nonexistent/user.creds: No such file"),
        (BusOptions(tls_ca_file="/nonexistent/ca.pem"), "--nats-tls-ca /nonexistent/ca.pem: No such file"),
        (BusOptions(url="http://broker:4222"), "the scheme must be one of nats, tls, ws, wss"),
        (BusOptions(password="secret"), "--nats-password needs --nats-user"),
    ],
)
def test_what_can_never_connect_is_refused(options: BusOptions, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_bus_options(options)


def test_a_bad_tls_file_is_refused(tmp_path: Path) -> None:
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="NATS TLS files do not load"):
        check_bus_options(BusOptions(tls_ca_file=str(not_a_cert)))


def test_the_service_exits_2_before_loading_anything() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "decode", "--nats", f"nats://127.0.0.1:{free_port()}",
         "--nats-creds", "/nonexistent/user.creds"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "pdserve decode: error: --nats-creds /nonexistent/user.creds: No such file or directory" in proc.stderr
    assert "Loading weights" not in proc.stderr
