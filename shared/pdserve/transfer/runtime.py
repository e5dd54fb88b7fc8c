"""The process's UCX runtime: one UCX context and worker, a progress thread and a notifier thread.

Why not `ucxx.create_listener` / `ucxx.create_endpoint`: in ucxx 0.52 the listener creates its
endpoints with peer error handling on whatever it is asked for, so a client without error
handling fails to connect ("error handling level mismatch"). We use ucxx's core API instead
(`ucxx._lib.libucxx`, the layer ucxx's own benchmarks use) and own the worker, which also lets
us pick the options below and shut the threads down cleanly.

Why Python futures: with ucxx's default request waiting, every pending receive busy-polls the
event loop (a full core per idle connection, measured). With `enable_python_future` a
notifier thread resolves asyncio futures and an idle worker costs ~nothing. ucxx's own notifier
thread is not a daemon and hangs interpreter exit unless stopped; ours is a daemon.

Why these UCX options (measured on one host, see docs/transfer.md): with peer error handling
on, UCX by default refuses its shared-memory transports and falls back to TCP (~0.6 GB/s).
`MM_ERROR_HANDLING=y` lets sysv/posix carry error-handling endpoints and
`CMA_MEMORY_INVALIDATE=y` lets cma do zero-copy rendezvous for them (~8 GB/s), and a peer that
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
import threading
from dataclasses import dataclass

import structlog
import ucxx._lib.libucxx as ucx_api  # on import, ucxx sets UCX defaults (RNDV_THRESH, ...) in os.environ

from pdserve.errors import KvTransferError

log = structlog.get_logger("pdserve.transfer")

DEFAULT_UCX_OPTIONS: dict[str, str] = {
    "MM_ERROR_HANDLING": "y",
    "CMA_MEMORY_INVALIDATE": "y",
    "TCP_CM_REUSEADDR": "y",
}

_NOTIFIER_PERIOD_NS = 100_000_000  # how often the notifier thread checks for shutdown
# The progress thread sleeps in epoll until UCX has an event; the timeout only bounds a missed
# wake-up. ucxx's 1 ms costs ~3% of a core per idle process; 100 ms costs ~0.1% (measured).
_EPOLL_TIMEOUT_MS = 100
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
    """One UCX worker with its threads, bound to one event loop. Use `acquire()`, not this."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        options = {} if os.environ.get("PD_NOOPT") else {k: v for k, v in DEFAULT_UCX_OPTIONS.items() if f"UCX_{k}" not in os.environ}
        features = (ucx_api.Feature.TAG, ucx_api.Feature.STREAM, ucx_api.Feature.WAKEUP)
        self.context = ucx_api.UCXContext(options, feature_flags=features)
        # Delayed submission: the progress thread posts every operation itself instead of the event
        # loop calling into a worker another thread is blocked in; measured 4 ms -> 0.6 ms round trip.
        self.worker = ucx_api.UCXWorker(self.context, enable_delayed_submission=not os.environ.get("PD_NODELAY"), enable_python_future=not os.environ.get("PD_NOFUT"))
        _bind_cuda_in_progress_thread(self.worker)
        self.worker.start_progress_thread(polling_mode=False, epoll_timeout=int(os.environ.get("PD_EPT", _EPOLL_TIMEOUT_MS)))
        self._stop = threading.Event()
        self._notifier = threading.Thread(target=self._notify, name="pdserve-ucx-notifier", daemon=True)
        self._notifier.start()
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

    def _notify(self) -> None:
        """Thread: hand completed UCX requests to the event loop, which resolves their futures."""
        asyncio.set_event_loop(self.loop)  # ucxx creates its futures for the thread's loop
        worker, waits = self.worker, ucx_api.PythonRequestNotifierWaitState
        while not self._stop.is_set():
            worker.populate_python_futures_pool()
            state = worker.wait_request_notifier(period_ns=_NOTIFIER_PERIOD_NS)
            if state == waits.Shutdown:
                return
            if state == waits.Timeout:
                continue
            done = threading.Event()

            def run(done: threading.Event = done) -> None:
                try:
                    worker.run_request_notifier()
                finally:
                    done.set()

            try:
                self.loop.call_soon_threadsafe(run)
            except RuntimeError:
                return  # the loop is closed: nobody is left to notify
            # Wait a little so notifications are not queued faster than the loop runs them.
            done.wait(0.05)

    def shutdown(self) -> None:
        """Stop both threads. Endpoints and listeners must have been closed already."""
        self._stop.set()
        self.worker.stop_request_notifier_thread()
        self._notifier.join(timeout=2.0)
        self.worker.stop_progress_thread()


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


def _bind_cuda_in_progress_thread(worker: ucx_api.UCXWorker) -> None:
    """UCX's progress thread must have the CUDA context current to move device memory."""
    import torch

    if not torch.cuda.is_available():
        return
    device = torch.cuda.current_device()
    worker.set_progress_thread_start_callback(torch.cuda.set_device, cb_args=(device,))
