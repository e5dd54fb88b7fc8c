"""Serving the router app with uvicorn inside the caller's event loop.

The caller (the CLI) owns the loop because the backend lives on it too (NATS connections,
stream subscriptions). On SIGINT/SIGTERM uvicorn stops accepting connections, lets requests in
flight finish for up to `graceful_shutdown_s` seconds, then cancels the rest, which closes their
backend streams and so cancels them on the workers.
"""

from __future__ import annotations

import asyncio

import structlog
import uvicorn
from fastapi import FastAPI

log = structlog.get_logger("pdserve.router.server")


class RouterServer:
    def __init__(self, app: FastAPI, host: str, port: int, *, graceful_shutdown_s: int = 30) -> None:
        """`port` 0 picks a free port; `port` (the property) tells which once started."""
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # logging is configured by whoever runs us, not by uvicorn
            access_log=False,  # the app logs each request itself, with its request id
            timeout_graceful_shutdown=graceful_shutdown_s,
            server_header=False,
        )
        self._server = uvicorn.Server(config)

    async def serve(self) -> None:
        """Serve until stopped (a signal or `stop()`); returns after the graceful shutdown."""
        await self._server.serve()

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
        self._server.should_exit = True


async def run_router(app: FastAPI, host: str, port: int, *, graceful_shutdown_s: int = 30) -> None:
    """Serve `app` on host:port until SIGINT/SIGTERM, then shut down gracefully."""
    await RouterServer(app, host, port, graceful_shutdown_s=graceful_shutdown_s).serve()
    log.info("router stopped")
