"""The process's UCX runtime: one UCX context and worker, progressed by the event loop itself.

Why not `ucxx.create_listener` / `ucxx.create_endpoint`: in ucxx 0.52 the listener creates its
endpoints with peer error handling on whatever it is asked for, so a client without error
handling fails to connect ("error handling level mismatch"). We use ucxx's core API instead
(`ucxx._lib.libucxx`, the layer ucxx's own benchmarks use) and own the worker.

Why the event loop progresses UCX (ucxx's "blocking" mode: the worker's epoll fd is a reader
of the loop) instead of ucxx's progress and notifier threads: every UCX call then happens on one
thread. With the threads (ucxx's default), on 2 cores, we measured: an event loop blocked for
good when a request on a failing endpoint was looked at before the progress thread had
submitted it (a peer dying mid-push could hang the survivor); a busy-polling core per pending
receive without Python futures; a ~4 ms round trip without delayed submission. Single-threaded
none of these can happen, and the round trip is ~0.2 ms; the cost is that UCX's copies run on
the loop (a cma read moves ~5 GB/s, so a 64 MiB layer holds the loop ~13 ms).

Why these UCX options (measured on one host, see docs/transfer.md): with peer error handling
on, UCX by default refuses its shared-memory transports and falls back to TCP (~0.6 GB/s).
`MM_ERROR_HANDLING=y` lets sysv/posix carry error-handling endpoints and
`CMA_MEMORY_INVALIDATE=y` lets cma do zero-copy rendezvous for them (~5 GB/s), and a peer that
dies mid-transfer then gives the survivor an error. Without error handling the survivor is
aborted by UCX inside process_vm_readv instead. `TCP_CM_REUSEADDR=y` lets a receiver listen
again on its fixed port while closed connections linger in TIME-WAIT (a restart, in a new
process or the same one). `UCX_<NAME>` in the environment overrides any of these.

The runtime is shared by every KvReceiver and KvSender of the process, counted by
acquire/release, and bound to the event loop it was created on; it is torn down when the
last user releases it, so a later event loop (tests, `asyncio.run` twice) gets a fresh one.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
from dataclasses import dataclass
from typing import Any

import structlog
import ucxx._lib.libucxx as ucx_api  # on import, ucxx sets UCX defaults (RNDV_THRESH, ...) in os.environ

from pdserve.errors import KvTransferError

log = structlog.get_logger("pdserve.transfer")

DEFAULT_UCX_OPTIONS: dict[str, str] = {
    "MM_ERROR_HANDLING": "y",
    "CMA_MEMORY_INVALIDATE": "y",
    "TCP_CM_REUSEADDR": "y",
}

# The loop progresses UCX when its epoll fd fires; these ticks only bound a missed wake-up.
_BUSY_TICK_S = 0.005
_IDLE_TICK_S = 0.1
_RESOURCE_LINE = re.compile(r"^#\s+resource\s+\d+\s*:.*flags\s+\S+\s+(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What UCX may use in this process. `transports` are "name/device" resources UCX found
    (e.g. "cma/memory", "tcp/lo"); which one a transfer takes also depends on error handling."""

    ucx_version: str
    ucx_tls: str
    transports: tuple[str, ...]
    options: tuple[tuple[str, str], ...]  # what we set; UCX_* environment variables win
    shm_error_handling: bool  # sysv/posix/cma may carry endpoints with peer error handling

    def intra_node_path(self, error_handling: bool) -> str:
        """Which transport a large same-host transfer takes, as measured for this configuration
        (UCX picks per endpoint; UCX_PROTO_INFO=y prints its actual choice)."""
        names = {t.split("/")[0] for t in self.transports}
        if error_handling and not self.shm_error_handling:
            return "tcp (error handling without shared-memory support)"
        if "cma" in names:
            return "cma zero-copy rendezvous, sysv/posix eager"
        if names & {"sysv", "posix"}:
            return "sysv/posix copy-in copy-out"
        return "tcp"

    def as_dict(self, error_handling: bool) -> dict[str, object]:
        return {
            "ucx_version": self.ucx_version,
            "ucx_tls": self.ucx_tls,
            "transports": list(self.transports),
            "options": dict(self.options),
            "error_handling": error_handling,
            "intra_node_path": self.intra_node_path(error_handling),
        }


class UcxRuntime:
    """One UCX worker progressed by one event loop. Use `acquire()`, not this."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        options = {k: v for k, v in DEFAULT_UCX_OPTIONS.items() if f"UCX_{k}" not in os.environ}
        features = (ucx_api.Feature.TAG, ucx_api.Feature.STREAM, ucx_api.Feature.WAKEUP)
        _make_cuda_current()
        self.context = ucx_api.UCXContext(options, feature_flags=features)
        self.worker = ucx_api.UCXWorker(self.context, enable_delayed_submission=False, enable_python_future=False)
        self.worker.init_blocking_progress_mode()
        self._fd = self.worker.epoll_file_descriptor
        self._pending: dict[int, tuple[Any, asyncio.Future[None]]] = {}
        self._kicked = False
        loop.add_reader(self._fd, self.progress)
        self._timer = loop.call_later(_IDLE_TICK_S, self._tick)
        self.info = TransportInfo(
            ucx_version=".".join(str(part) for part in ucx_api.get_ucx_version()),
            ucx_tls=str(self.context.config.get("TLS", "?")),
            transports=tuple(sorted(set(_RESOURCE_LINE.findall(self.context.info)))),
            options=tuple(sorted(options.items())),
            shm_error_handling=all(
                os.environ.get(f"UCX_{k}", DEFAULT_UCX_OPTIONS[k]).lower() in ("y", "yes", "1", "on")
                for k in ("MM_ERROR_HANDLING", "CMA_MEMORY_INVALIDATE")
            ),
        )

    def watch(self, request: Any) -> asyncio.Future[None]:
        """A future that completes (or fails with ucxx's error) when `request` does. Cancelling
        the future does not cancel the request: close its endpoint for that."""
        future = self.loop.create_future()
        self._pending[id(request)] = (request, future)
        self.kick()
        return future

    def kick(self) -> None:
        """Progress soon: a new operation may complete without the epoll fd firing."""
        if not self._kicked:
            self._kicked = True
            self.loop.call_soon(self.progress)

    def progress(self) -> None:
        """Progress until UCX has nothing more, settle finished requests, re-arm the fd."""
        self._kicked = False
        worker = self.worker
        while True:
            worker.progress()  # ucxx's progress also runs its deferred work (cancelling a failed endpoint's requests)
            self._settle()
            if worker.arm():
                return

    def _settle(self) -> None:
        for key, (request, future) in list(self._pending.items()):
            if not request.completed:
                continue
            del self._pending[key]
            if future.done():
                continue  # its waiter gave up (timeout, cancel)
            try:
                request.check_error()
            except Exception as exc:  # ucxx's UCXError subclasses; the waiter maps them
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _tick(self) -> None:
        # A missed wake-up costs at most one tick; fast while requests are in flight.
        self.progress()
        self._timer = self.loop.call_later(_BUSY_TICK_S if self._pending else _IDLE_TICK_S, self._tick)

    def shutdown(self) -> None:
        """Stop progressing. Endpoints and listeners must have been closed already."""
        self._timer.cancel()
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(KvTransferError("UCX runtime shut down"))
                future.exception()  # retrieved: nobody may be waiting any more
        self._pending.clear()


_runtime: UcxRuntime | None = None


def acquire() -> UcxRuntime:
    """The process's runtime for the running event loop, created on first use; pair with release()."""
    global _runtime
    loop = asyncio.get_running_loop()
    if _runtime is not None and _runtime.loop is not loop:
        if not _runtime.loop.is_closed():
            raise KvTransferError(
                "the UCX runtime is bound to another running event loop; "
                "use KvReceiver/KvSender from one loop, or close them all first"
            )
        # A loop that closed without closing its users (a crashed test): start over.
        log.warning("ucx runtime of a closed event loop discarded", users=_runtime.users)
        _discard(_runtime)
        _runtime = None
    if _runtime is None:
        _runtime = UcxRuntime(loop)
    _runtime.users += 1
    return _runtime


def release(runtime: UcxRuntime) -> None:
    """Give back what acquire() returned; the last release shuts the runtime down."""
    global _runtime
    runtime.users -= 1
    if runtime.users <= 0 and runtime is _runtime:
        _runtime = None
        runtime.shutdown()


def _discard(runtime: UcxRuntime) -> None:
    try:
        runtime.shutdown()
    except Exception:  # best effort on a runtime nobody can use any more
        log.exception("ucx runtime shutdown failed")


@atexit.register
def _shutdown_at_exit() -> None:
    if _runtime is not None:
        _discard(_runtime)


def _make_cuda_current() -> None:
    """UCX moves device memory from the thread that progresses it: the loop's, which needs the
    CUDA context current."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(torch.cuda.current_device())
