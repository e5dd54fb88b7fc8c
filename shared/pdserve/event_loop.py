"""Which asyncio event loop the services run on: uvloop where it is installed, else asyncio's own.

Every request crosses several event loops (router HTTP, NATS client, worker), and per request
most of the router's and the worker's CPU is event-loop machinery: selector wake-ups, callbacks,
task steps. uvloop (libuv, in C) does that machinery in a fraction of the time; measured with
ops/bench_router_overhead.py in docs/benchmarks.md. `PDSERVE_EVENT_LOOP=asyncio` picks the
standard loop (to compare, or where uvloop misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV_VAR = "PDSERVE_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory the environment asks for; None means asyncio's default loop."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError(f"{ENV_VAR}=uvloop but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory()` picks."""
    try:
        factory = loop_factory()
    except ValueError:
        main.close()  # never awaited; closing it avoids a "never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def name() -> str:
    """The running loop's kind, for logs: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
