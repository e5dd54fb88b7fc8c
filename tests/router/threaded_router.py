"""A router on the tiny model, served by uvicorn on its own thread and event loop.

For synchronous clients (schemathesis sends with `requests`): a server on the test's own event
loop would never run while a synchronous test waits on its socket.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pdserve.engine.llm_engine import LLMEngine
from pdserve.services.router import RouterServer, create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL


class ThreadedRouter:
    def __init__(self, engine: LLMEngine, **app_options: Any) -> None:
        """`app_options` go to create_app (limits, API keys)."""
        self.engine = engine
        self.app_options = app_options
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: RouterServer | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="router-under-test", daemon=True)

    def __enter__(self) -> ThreadedRouter:
        self._thread.start()
        if not self._started.wait(30) or self._error is not None:
            raise RuntimeError("the router did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the router did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        backend = LocalBackend(self.engine)
        await backend.start()
        try:
            app = create_app(backend, self.engine.tokenizer, model_name=MODEL, **self.app_options)
            self._server = RouterServer(app, "127.0.0.1", 0, graceful_shutdown_s=2)
            serving = asyncio.create_task(self._server.serve(handle_signals=False))
            await self._server.wait_started()
            self.url = f"http://127.0.0.1:{self._server.port}"
            self._started.set()
            await serving
        finally:
            await backend.close()
