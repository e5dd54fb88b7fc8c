"""local_broker: the URL comes from the nats-server that was started, never from whoever holds a port."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from pdserve.services.local_broker import local_broker_argv, nats_server_binary, read_ports_file, wait_for_broker


def test_the_url_is_the_port_the_started_server_listens_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(local_broker_argv(nats_server_binary(), tmp_path), stdout=subprocess.DEVNULL)
    try:
        url = wait_for_broker(proc, tmp_path, 10)
        assert url is not None and url.startswith("nats://127.0.0.1:")
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
            assert s.recv(5) == b"INFO "  # a NATS server greets first
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_server_that_exits_gives_no_url_even_if_the_port_is_held(tmp_path: Path) -> None:
    """The race this module closes: nats-server cannot bind, exits, and another listener has the port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "--ports_file_dir", str(tmp_path)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for_broker(proc, tmp_path, 10) is None
            assert proc.poll() is not None  # it gave up because it exited, not on the timeout
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_half_written_or_foreign_ports_files_are_not_read_as_urls(tmp_path: Path) -> None:
    path = tmp_path / "nats-server_1.ports"
    for text in ["", '{"nats": ["nats://127.0.0.1:4', "[]", '{"nats": "nats://x:1"}', '{"nats": ["tls://x:1"]}']:
        path.write_text(text)
        assert read_ports_file(path) is None, text
    path.write_text('{"nats": ["nats://127.0.0.1:4222"], "monitoring": ["http://127.0.0.1:8222"]}')
    assert read_ports_file(path) == "nats://127.0.0.1:4222"
    assert read_ports_file(tmp_path / "missing.ports") is None
