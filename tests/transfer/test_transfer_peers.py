"""Peers that close, restart or go quiet: the survivor neither hangs nor reuses a dead endpoint."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from pdserve.transfer import KvReceiver, KvSender, KvTransferError
from transfer_cases import random_layers, shapes


async def _push_one(receiver: KvReceiver, sender: KvSender, seed: int = 0) -> None:
    layers = random_layers(2, tokens=8, seed=seed)
    ticket = receiver.expect("r", shapes(layers), torch.float32)
    await sender.push(receiver.address, ticket.id, layers, timeout=5)
    got = await receiver.wait(ticket.id, timeout=5)
    assert all(torch.equal(a, b) for a, b in zip(layers, got, strict=True))


@pytest.mark.parametrize("error_handling", [True, False])
async def test_receiver_restarted_on_the_same_port(error_handling: bool) -> None:
    sender = KvSender(error_handling=error_handling)
    first = KvReceiver(error_handling=error_handling)
    await first.start()
    port = int(first.address.rsplit(":", 1)[1])
    try:
        await _push_one(first, sender)
        address = first.address
        await first.close()

        # Nobody listens now: the push fails, within its timeout, on a dropped endpoint.
        started = time.monotonic()
        with pytest.raises(KvTransferError):
            await sender.push(address, 1, random_layers(1, tokens=2), timeout=1.0)
        assert time.monotonic() - started < 1.5

        second = KvReceiver(port=port, error_handling=error_handling)
        await second.start()
        try:
            assert second.address == address
            await _push_one(second, sender, seed=1)
        finally:
            await second.close()
        assert sender.stats.endpoints_created >= 2  # the old endpoint was never reused
        assert sender.stats.pushes_ok == 2
    finally:
        await sender.close()


async def test_receiver_closing_idle_connections_costs_no_push() -> None:
    receiver = KvReceiver(idle_timeout_s=0.2)
    sender = KvSender()
    await receiver.start()
    try:
        await _push_one(receiver, sender)
        await asyncio.sleep(0.5)  # the receiver closes the idle connection; the sender notices
        assert receiver.open_connections == 0
        await _push_one(receiver, sender, seed=1)
        assert sender.stats.pushes_failed == 0 and sender.stats.endpoints_created == 2
    finally:
        await sender.close()
        await receiver.close()


async def test_sender_replaces_endpoints_idle_too_long(receiver: KvReceiver) -> None:
    sender = KvSender(max_idle_s=0.05)
    try:
        await _push_one(receiver, sender)
        await asyncio.sleep(0.1)
        await _push_one(receiver, sender, seed=1)
        assert sender.stats.endpoints_created == 2 and sender.stats.endpoints_dropped == 1
    finally:
        await sender.close()


async def test_a_closed_sender_refuses_and_its_connections_end(receiver: KvReceiver) -> None:
    sender = KvSender()
    await _push_one(receiver, sender)
    await sender.close()
    with pytest.raises(KvTransferError, match="closed"):
        await sender.push(receiver.address, 1, random_layers(1, tokens=2))
    deadline = time.monotonic() + 2
    while receiver.open_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert receiver.open_connections == 0
