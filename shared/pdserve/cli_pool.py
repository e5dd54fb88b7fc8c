"""The KV pool's size from the command line: what `generate` and the workers hand EngineConfig."""

from __future__ import annotations

import argparse
from typing import Any


def kv_pool_options(args: argparse.Namespace) -> dict[str, Any]:
    """EngineConfig's KV pool sizing from the flags that were given (the others keep its defaults)."""
    options: dict[str, Any] = {}
    if args.kv_cache_memory_bytes is not None:
        options["kv_cache_bytes"] = args.kv_cache_memory_bytes
    if args.gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = args.gpu_memory_utilization
    return options
