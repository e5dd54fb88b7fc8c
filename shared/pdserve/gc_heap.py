"""Keeping the garbage collector's full passes short in the long-running services.

A router or worker process holds about 400,000 Python objects once torch and transformers are
imported and the model or tokenizer is loaded, and they live as long as the process. CPython's
full (generation 2) collection walks all of them: about 0.2 s on our machines, with the GIL
held, so every stream in the process stalls that long. Under load a router ran one every 2-3 s
(docs/benchmarks.md). `gc.freeze()` once startup is done moves those objects to a permanent
generation that collections skip; a full pass then walks only what serving created since, and
takes a millisecond or two. What the frozen objects refer to is still freed by reference
counting; only cycles among them are never collected, which is what a process that keeps them
for its whole life wants anyway.

`PDSERVE_GC_FREEZE=0` turns it off (to compare, or to hunt a leak with the collector's help).
Not done for the offline `LLM`: it is a library object in the caller's process, whose heap is
not ours to freeze.

`pdserve bench` freezes its own heap for the measured run only (`frozen_heap`): a load
generator's full collections (up to 100 ms each, a dozen in a 3,000-request run) would be timed
as the server's inter-token latency.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator

import structlog

log = structlog.get_logger("pdserve.gc")

ENV_VAR = "PDSERVE_GC_FREEZE"


def freeze_enabled() -> bool:
    """What PDSERVE_GC_FREEZE asks for: "1" (default) or "0"; anything else is refused."""
    value = os.environ.get(ENV_VAR, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {value!r}")
    return value == "1"


def freeze_startup_heap() -> int:
    """Collect once, then freeze everything alive; returns how many objects are frozen now.
    Call when startup (imports, model, tokenizer) is done, before serving traffic."""
    if not freeze_enabled():
        log.info("startup heap left to the collector", reason=f"{ENV_VAR}=0")
        return gc.get_freeze_count()
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("startup heap frozen", objects=frozen, seconds=round(time.perf_counter() - started, 3))
    return frozen


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Everything alive on entry is frozen until exit (then handed back to the collector), so
    the collections inside are short. For a bounded phase of a process that is not ours for
    good (a benchmark run); not subject to PDSERVE_GC_FREEZE, which is about the services."""
    if gc.get_freeze_count():
        yield  # frozen already (by its owner): unfreezing at exit would undo that too
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
