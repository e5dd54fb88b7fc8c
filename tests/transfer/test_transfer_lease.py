"""Tickets are leases: they expire, can be cancelled, and always give their buffers back."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pdserve.transfer import KvReceiver, KvSender, KvTransferError, PushRefused, TicketError, wire
from transfer_cases import assert_nothing_held, random_layers, shapes


async def test_lease_expiry_without_a_push_fails_wait() -> None:
    receiver = KvReceiver(lease_timeout_s=0.2)
    await receiver.start()
    try:
        ticket = receiver.expect("r", [(2, 8, 4, 32)], torch.float32)
        assert receiver.reserved_bytes == ticket.total_nbytes
        with pytest.raises(TicketError) as info:
            await receiver.wait(ticket.id, timeout=5)
        assert info.value.code is wire.Code.EXPIRED_TICKET
        assert receiver.stats.expired == 1 and receiver.stats.transfers_failed == 1
        await assert_nothing_held(receiver)
    finally:
        await receiver.close()


async def test_push_after_expiry_hears_expired(sender: KvSender) -> None:
    receiver = KvReceiver(lease_timeout_s=0.1)
    await receiver.start()
    try:
        layers = random_layers(1, tokens=4)
        ticket = receiver.expect("r", shapes(layers), torch.float32)
        await asyncio.sleep(0.3)
        with pytest.raises(PushRefused) as info:
            await sender.push(receiver.address, ticket.id, layers, timeout=5)
        assert info.value.code is wire.Code.EXPIRED_TICKET
        await assert_nothing_held(receiver, open_connections=1)  # refused at its HELLO: the link stays
    finally:
        await receiver.close()


async def test_cancel_fails_the_waiter_and_frees_the_buffers(receiver: KvReceiver) -> None:
    ticket = receiver.expect("r", [(1024,)], torch.float32)
    waiting = asyncio.create_task(receiver.wait(ticket.id, timeout=5))
    await asyncio.sleep(0)
    receiver.cancel(ticket.id)
    with pytest.raises(KvTransferError, match="cancelled"):
        await waiting
    receiver.cancel(ticket.id)  # a second cancel is a no-op
    assert receiver.stats.cancelled == 1
    await assert_nothing_held(receiver)


async def test_wait_timeout_leaves_the_lease_running(receiver: KvReceiver, sender: KvSender) -> None:
    layers = random_layers(1, tokens=4)
    ticket = receiver.expect("r", shapes(layers), torch.float32)
    with pytest.raises(KvTransferError, match="lease still runs"):
        await receiver.wait(ticket.id, timeout=0.05)
    await sender.push(receiver.address, ticket.id, layers)
    assert torch.equal((await receiver.wait(ticket.id, timeout=1))[0], layers[0])


async def test_close_fails_live_tickets(sender: KvSender) -> None:
    receiver = KvReceiver()
    await receiver.start()
    ticket = receiver.expect("r", [(16,)], torch.float32)
    waiting = asyncio.create_task(receiver.wait(ticket.id))
    await asyncio.sleep(0)
    await receiver.close()
    with pytest.raises(KvTransferError, match="closed"):
        await waiting
    assert receiver.active_tickets == 0


async def test_expect_checks_its_arguments(receiver: KvReceiver) -> None:
    with pytest.raises(KvTransferError):
        receiver.expect("r", [], torch.float32)
    with pytest.raises(KvTransferError):
        receiver.expect("r", [(2, 0, 4)], torch.float32)
    with pytest.raises(KvTransferError, match="not started"):
        KvReceiver().expect("r", [(4,)], torch.float32)
