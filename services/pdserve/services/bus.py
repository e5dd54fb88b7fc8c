"""The NATS connection every service opens: reconnects forever, logs every state change."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

import nats
import structlog
from nats.aio.client import Client

log = structlog.get_logger("pdserve.bus")


@dataclass(slots=True)
class BusOptions:
    """How to reach the broker. Credentials and TLS are passed to every service alike."""

    url: str = "nats://127.0.0.1:4222"
    cluster: str = "pdserve"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def check_bus_options(options: BusOptions) -> None:
    """Refuse what can never connect, before a service loads its model and starts its endless
    wait for the broker: a URL scheme NATS does not speak, credentials or TLS files that are
    missing or unreadable (and certificates that do not load), a password without a user."""
    scheme, sep, _ = options.url.partition("://")
    if sep and scheme.lower() not in NATS_SCHEMES:
        raise ValueError(f"--nats {options.url!r}: the scheme must be one of {', '.join(NATS_SCHEMES)}")
    files = {
        "--nats-nkey-seed": options.nkey_seed_file,
        "--nats-creds": options.creds_file,
        "--nats-tls-ca": options.tls_ca_file,
        "--nats-tls-cert": options.tls_cert_file,
        "--nats-tls-key": options.tls_key_file,
    }
    for flag, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ValueError(f"{flag} {path}: {e.strerror or e}") from None
    if options.password is not None and options.user is None:
        raise ValueError("--nats-password needs --nats-user")
    if options.tls_key_file and not options.tls_cert_file:
        raise ValueError("--nats-tls-key needs --nats-tls-cert")
    tls_context(options)


def tls_context(options: BusOptions) -> ssl.SSLContext | None:
    """The client's TLS context when a CA or a client certificate is given; ValueError if they do not load."""
    if not (options.tls_ca_file or options.tls_cert_file):
        return None
    try:
        context = ssl.create_default_context(cafile=options.tls_ca_file)
        if options.tls_cert_file:
            context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(
            f"NATS TLS files do not load ({e}); check --nats-tls-ca, --nats-tls-cert, --nats-tls-key"
        ) from e
    return context


async def connect(options: BusOptions, name: str) -> Client:
    last_warned = [0.0]

    async def on_error(exc: Exception) -> None:
        # The client retries every 0.5 s forever (services may start before the broker);
        # one line every 5 s says so, with what to check.
        now = time.monotonic()
        if now - last_warned[0] >= 5.0:
            last_warned[0] = now
            log.warning(
                "nats error; retrying", error=repr(exc), url=options.url, hint="is nats-server running and reachable?"
            )

    async def on_disconnect() -> None:
        log.warning("nats disconnected; reconnecting", url=options.url)

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=options.url)

    kwargs: dict[str, object] = {
        "servers": [options.url],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if options.user is not None:
        kwargs["user"], kwargs["password"] = options.user, options.password
    if options.token is not None:
        kwargs["token"] = options.token
    if options.nkey_seed_file is not None:
        kwargs["nkeys_seed"] = options.nkey_seed_file
    if options.creds_file is not None:
        kwargs["user_credentials"] = options.creds_file
    if (context := tls_context(options)) is not None:
        kwargs["tls"] = context
    nc = await nats.connect(**kwargs)  # type: ignore[arg-type]
    log.info("nats connected", url=options.url, cluster=options.cluster)
    return nc


async def disconnect(nc: Client, timeout_s: float = 5.0) -> None:
    """Drain then close, and make sure no reconnect loop outlives the client.

    With the broker gone, nats-py's drain raises (the client is reconnecting) or waits forever; and its
    reconnect loop can miss the cancel that close() sends (a cancel landing on a failed connect attempt
    is swallowed), then retry for good and keep the process alive after its service stopped. So the
    drain gets a bounded wait, the close always happens, and the client is first told to give up after
    one more attempt, which ends such a loop by itself.
    """
    nc.options["max_reconnect_attempts"] = 1
    try:
        await asyncio.wait_for(nc.drain(), timeout_s)
    except Exception as exc:
        log.info("nats drain skipped; closing", error=repr(exc))
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()
    reconnecting = getattr(nc, "_reconnection_task", None)  # private: only waited on, never changed
    deadline = time.monotonic() + timeout_s
    while reconnecting is not None and not reconnecting.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def send_now(nc: Client) -> None:
    """Write what `nc` has buffered to the socket now, rather than on its flusher task's next turn.

    nats-py queues every publish for a flusher task, so a message leaves a loop iteration or
    more after `publish` returns, behind whatever else is ready to run; on the path of every
    request (the task, its ack, each step's chunks) those turns measured 0.2-0.3 ms per request
    (docs/benchmarks.md, router overhead). Callers publish what belongs together (one step's
    chunks), then call this once, as the C and Java NATS clients' "send ASAP" options do.

    It relies on three of nats-py's private attributes; without them (another nats-py) it does
    nothing and the flusher sends as before (tests/cluster/test_bus_send_now.py checks they exist).
    """
    pending = getattr(nc, "_pending", None)
    transport = getattr(nc, "_transport", None)
    if not pending or transport is None or not nc.is_connected or not hasattr(nc, "_pending_data_size"):
        return
    try:
        transport.writelines(pending[:])
    except OSError:
        return  # left for the flusher, whose error handling starts the reconnect
    nc._pending = []
    nc._pending_data_size = 0


async def flush(nc: Client, timeout_s: int = 10) -> None:
    """Return once the broker has processed everything given to `nc` before this call.

    That is what NATS's flush promises (a PING behind the buffered commands, then its PONG), and what
    a subscriber needs before another connection publishes to it. nats-py 2.16's own `flush()` writes
    its PING straight to the socket, ahead of commands still buffered for its flusher task (a SUB just
    made), so its PONG can come back before the broker has seen the SUB, and messages another
    connection then publishes find no subscriber (tests/cluster/test_bus_flush.py shows the order).
    Writing the buffer first puts the PING behind it again.
    """
    send_now(nc)
    await nc.flush(timeout=timeout_s)
