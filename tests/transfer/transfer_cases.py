"""Test data for the transfer plane: KV layers shaped as the engine exports them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import torch
import ucxx._lib.libucxx as ucx_api
from pdserve.transfer import KvReceiver, runtime, wire
from pdserve.transfer.link import Link
from pdserve.transfer.sender import parse_address


def random_layers(
    num_layers: int, tokens: int, dtype: torch.dtype = torch.float32, heads: int = 4, head_dim: int = 32, seed: int = 0
) -> list[torch.Tensor]:
    """Per-layer KV as the engine exports it: [2, tokens, kv_heads, head_dim], contiguous."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, tokens, heads, head_dim, generator=gen).to(dtype) for _ in range(num_layers)]


def shapes(layers: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in layers]


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until `predicate()` holds (connection handlers finish a moment after a reply)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def assert_nothing_held(receiver: KvReceiver, open_connections: int = 0) -> None:
    """No live ticket, no reserved byte, and no connection left over from a failure (a push
    refused at its HELLO leaves its connection open and clean: `open_connections` of those)."""
    assert receiver.active_tickets == 0
    assert receiver.reserved_bytes == 0
    await eventually(lambda: receiver.open_connections == open_connections)


@contextlib.asynccontextmanager
async def raw_link(address: str) -> AsyncIterator[Link]:
    """A bare UCX link to a receiver, for speaking the wire protocol wrongly on purpose."""
    rt = runtime.acquire()
    host, port = parse_address(address)
    link = Link(rt, ucx_api.UCXEndpoint.create(rt.worker, host, port, True), f"test client of {address}")
    link.open_as_sender(secrets.randbits(wire.CONNECTION_ID_BITS))
    try:
        await link.opened()
        yield link
    finally:
        link.close()
        runtime.release(rt)
