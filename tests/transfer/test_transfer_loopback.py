"""Pushes within one process over real UCX: bytes arrive unchanged, connections are reused."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pdserve.transfer import KvReceiver, KvSender
from transfer_cases import assert_nothing_held, random_layers, shapes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
async def test_push_delivers_every_layer_bit_for_bit(receiver: KvReceiver, sender: KvSender, dtype) -> None:  # type: ignore[no-untyped-def]
    layers = random_layers(4, tokens=37, dtype=dtype)
    ticket = receiver.expect("req-1", shapes(layers), dtype)
    assert ticket.layer_nbytes == tuple(t.numel() * t.element_size() for t in layers)
    waiting = asyncio.create_task(receiver.wait(ticket.id, timeout=5))
    seconds = await sender.push(receiver.address, ticket.id, layers, timeout=5)
    got = await waiting
    assert seconds > 0
    assert [t.dtype for t in got] == [dtype] * 4
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(layers, got, strict=True))
    assert receiver.stats.transfers_ok == 1 and receiver.stats.bytes_received == ticket.total_nbytes
    assert sender.stats.pushes_ok == 1 and sender.stats.bytes_sent == ticket.total_nbytes
    assert receiver.active_tickets == 0 and receiver.reserved_bytes == 0


async def test_back_to_back_pushes_reuse_one_endpoint(receiver: KvReceiver, sender: KvSender) -> None:
    for seed in range(2):
        layers = random_layers(3, tokens=16, seed=seed)
        ticket = receiver.expect(f"req-{seed}", shapes(layers), torch.float32)
        await sender.push(receiver.address, ticket.id, layers)
        got = await receiver.wait(ticket.id, timeout=5)
        assert all(torch.equal(a, b) for a, b in zip(layers, got, strict=True))
    assert sender.stats.endpoints_created == 1
    assert receiver.stats.connections_accepted == 1
    assert receiver.stats.transfers_ok == 2


async def test_concurrent_pushes_to_one_receiver(receiver: KvReceiver) -> None:
    senders = [KvSender(), KvSender()]
    try:
        jobs = []
        for i in range(6):
            layers = random_layers(2, tokens=8 + i, seed=i)
            ticket = receiver.expect(f"req-{i}", shapes(layers), torch.float32)
            jobs.append((ticket, layers, senders[i % 2]))
        waits = [asyncio.create_task(receiver.wait(t.id, timeout=10)) for t, _, _ in jobs]
        await asyncio.gather(*(s.push(receiver.address, t.id, layers) for t, layers, s in jobs))
        for (_, layers, _), got in zip(jobs, await asyncio.gather(*waits), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(layers, got, strict=True))
        assert receiver.stats.transfers_ok == 6
        # Pushes to one peer take turns on one endpoint per sender.
        assert [s.stats.endpoints_created for s in senders] == [1, 1]
    finally:
        for s in senders:
            await s.close()
    await assert_nothing_held(receiver)  # closing the senders closes their connections


async def test_stats_name_the_transport_and_error_handling(receiver: KvReceiver, sender: KvSender) -> None:
    transport = receiver.stats.as_dict()["transport"]
    assert isinstance(transport, dict)
    assert transport["error_handling"] is True
    assert transport["ucx_tls"]
    assert any(name.startswith("tcp/") for name in transport["transports"])  # type: ignore[union-attr]
    assert "intra_node_path" in transport
