"""Serving the router app with uvicorn inside the caller's event loop.

The caller (the CLI) owns the loop because the backend lives on it too (NATS connections,
stream subscriptions). On SIGINT or SIGTERM the server stops accepting connections, lets
requests in flight finish for up to `graceful_shutdown_s` seconds, cancels the rest (which closes
their backend streams and so cancels them on the workers), and `serve()` returns: the caller then
closes the backend. A second SIGINT skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn
from fastapi import FastAPI
from pdserve.services.router.tls import ServerTls

log = structlog.get_logger("pdserve.router.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handling re-raises the signal after shutting down, which would kill the
        # process (SIGTERM's default action) before the caller could close the backend.
        yield


class RouterServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, *, graceful_shutdown_s: int = 30, tls: ServerTls | None = None
    ) -> None:
        """`port` 0 picks a free port; the `port` property tells which, once started. With `tls`
        (checked by tls.server_tls) it serves HTTPS only."""
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # logging is configured by whoever runs us, not by uvicorn
            access_log=False,  # the app logs each request itself, with its request id
            timeout_graceful_shutdown=graceful_shutdown_s,
            server_header=False,
            # Nothing here reads the client's address; rewriting it from X-Forwarded-For would
            # only add a layer to every request.
            proxy_headers=False,
            **(tls.uvicorn_options() if tls is not None else {}),
        )
        self._server = _Server(config)

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Serve until SIGINT/SIGTERM (if `handle_signals`, main thread only) or `stop()`;
        returns after the graceful shutdown."""
        loop = asyncio.get_running_loop()
        installed = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or a platform without loop signal handlers
        try:
            await self._server.serve()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def wait_started(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        if not self._server.started or not self._server.servers:
            raise RuntimeError("the server is not listening yet")
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Begin the graceful shutdown, as SIGTERM would."""
        self._server.should_exit = True

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._server.should_exit and sig == signal.SIGINT:
            log.warning("second interrupt: cancelling requests in flight now")
            self._server.force_exit = True
            return
        log.info("shutting down: finishing requests in flight", signal=sig.name)
        self._server.should_exit = True


async def run_router(
    app: FastAPI, host: str, port: int, *, graceful_shutdown_s: int = 30, tls: ServerTls | None = None
) -> None:
    """Serve `app` on host:port (HTTPS with `tls`) until SIGINT/SIGTERM, then shut down gracefully and return."""
    await RouterServer(app, host, port, graceful_shutdown_s=graceful_shutdown_s, tls=tls).serve()
    log.info("router stopped")
