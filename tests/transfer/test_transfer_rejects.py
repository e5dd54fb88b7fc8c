"""Every message is checked against the ticket; a bad one is refused, counted, and leaks nothing."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pdserve.transfer import KvReceiver, KvSender, KvTransferError, PushRefused, wire
from transfer_cases import assert_nothing_held, random_layers, raw_link, shapes


async def test_unknown_ticket_is_refused_and_nothing_is_held(receiver: KvReceiver, sender: KvSender) -> None:
    layers = random_layers(2, tokens=8)
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, 123456789, layers, timeout=5)
    assert info.value.code is wire.Code.UNKNOWN_TICKET
    assert "unknown ticket 123456789" in str(info.value)
    assert receiver.stats.rejected["unknown_ticket"] == 1
    assert sender.stats.failures["unknown_ticket"] == 1
    assert sender.stats.endpoints_dropped == 0  # refused at its HELLO: the link stays usable
    await assert_nothing_held(receiver, open_connections=1)


async def test_refused_tickets_do_not_fail_the_pushes_queued_behind_them(
    receiver: KvReceiver, sender: KvSender
) -> None:
    """A burst of pushes to one decode worker, some for tickets it already ended (their requests
    were cancelled): those are refused, every other push lands, all on one link. Closing the link
    on each refusal failed every push queued behind it (a client disconnect storm lost 150)."""
    pushes = []
    expected: dict[int, list[torch.Tensor]] = {}
    for i in range(12):
        layers = random_layers(2, tokens=8)
        ticket = receiver.expect(f"r{i}", shapes(layers), torch.float32)
        if i % 3 == 1:
            receiver.cancel(ticket.id)
        else:
            expected[ticket.id] = layers
        pushes.append(sender.push(receiver.address, ticket.id, layers, timeout=10))
    results = await asyncio.gather(*pushes, return_exceptions=True)
    refused = [r for r in results if isinstance(r, PushRefused)]
    # A cancelled ticket is gone: the receiver knows it no more.
    assert len(refused) == 4 and all(r.code is wire.Code.UNKNOWN_TICKET and r.at_hello for r in refused)
    assert sum(isinstance(r, float) for r in results) == 8, results
    for ticket_id, layers in expected.items():
        got = await receiver.wait(ticket_id, timeout=5)
        assert all(torch.equal(a, b) for a, b in zip(got, layers, strict=True))
    assert sender.stats.endpoints_created == 1 and sender.stats.endpoints_dropped == 0
    await assert_nothing_held(receiver, open_connections=1)


async def test_wrong_total_size_fails_the_ticket(receiver: KvReceiver, sender: KvSender) -> None:
    ticket = receiver.expect("r", [(2, 8, 4, 32)] * 2, torch.float32)
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, ticket.id, random_layers(2, tokens=9), timeout=5)
    assert info.value.code is wire.Code.TOTAL_SIZE
    with pytest.raises(KvTransferError, match="bytes"):
        await receiver.wait(ticket.id, timeout=1)
    assert receiver.stats.transfers_failed == 1
    await assert_nothing_held(receiver, open_connections=1)


async def test_wrong_layer_size_with_the_right_total_is_refused(receiver: KvReceiver, sender: KvSender) -> None:
    ticket = receiver.expect("r", [(2, 8, 4, 32), (2, 16, 4, 32)], torch.float32)
    swapped = [torch.zeros(2, 16, 4, 32), torch.zeros(2, 8, 4, 32)]
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, ticket.id, swapped, timeout=5)
    assert info.value.code is wire.Code.LAYER_SIZE
    assert receiver.stats.rejected["layer_size"] == 1
    with pytest.raises(KvTransferError):
        await receiver.wait(ticket.id, timeout=1)
    await assert_nothing_held(receiver)


async def test_wrong_layer_count_is_refused(receiver: KvReceiver, sender: KvSender) -> None:
    ticket = receiver.expect("r", [(2, 8, 4, 32)] * 3, torch.float32)
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, ticket.id, random_layers(2, tokens=8), timeout=5)
    assert info.value.code is wire.Code.LAYER_COUNT
    await assert_nothing_held(receiver, open_connections=1)


async def test_a_ticket_can_be_pushed_only_once(receiver: KvReceiver, sender: KvSender) -> None:
    layers = random_layers(1, tokens=4)
    ticket = receiver.expect("r", shapes(layers), torch.float32)
    await sender.push(receiver.address, ticket.id, layers)
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, ticket.id, layers)
    assert info.value.code is wire.Code.TICKET_BUSY  # done, waiting to be taken
    assert len(await receiver.wait(ticket.id, timeout=1)) == 1
    with pytest.raises(PushRefused) as info:
        await sender.push(receiver.address, ticket.id, layers)
    assert info.value.code is wire.Code.UNKNOWN_TICKET
    await assert_nothing_held(receiver, open_connections=1)


async def _expect_reply(link, code: wire.Code) -> None:  # type: ignore[no-untyped-def]
    reply = await asyncio.wait_for(link.recv_frame(wire.FrameKind.REPLY), 5)
    assert reply.value is code, reply


async def test_bad_magic_and_version_are_refused(receiver: KvReceiver) -> None:
    for raw, code in [
        (b"EVIL" + bytes(wire.hello(1, 1, 1))[4:], wire.Code.BAD_MAGIC),
        (bytes(wire.hello(1, 1, 1))[:4] + b"\x09\x00" + bytes(wire.hello(1, 1, 1))[6:], wire.Code.BAD_VERSION),
    ]:
        async with raw_link(receiver.address) as link:
            await link.send_frame(bytearray(raw))
            await _expect_reply(link, code)
    assert receiver.stats.rejected["bad_magic"] == 1 and receiver.stats.rejected["bad_version"] == 1
    await assert_nothing_held(receiver)


async def test_layers_out_of_order_are_refused(receiver: KvReceiver) -> None:
    ticket = receiver.expect("r", [(64,), (64,)], torch.float32)
    async with raw_link(receiver.address) as link:
        await link.send_frame(wire.hello(ticket.id, 2, 512))
        await _expect_reply(link, wire.Code.OK)
        await link.send_frame(wire.layer(ticket.id, 1, 256))
        await _expect_reply(link, wire.Code.LAYER_ORDER)
    with pytest.raises(KvTransferError, match="expected layer 0"):
        await receiver.wait(ticket.id, timeout=1)
    await assert_nothing_held(receiver)


async def test_payload_longer_than_announced_is_refused_without_overflow(receiver: KvReceiver) -> None:
    ticket = receiver.expect("r", [(64,)], torch.float32)
    async with raw_link(receiver.address) as link:
        await link.send_frame(wire.hello(ticket.id, 1, 256))
        await _expect_reply(link, wire.Code.OK)
        await link.send_frame(wire.layer(ticket.id, 0, 256))  # the header says the right size...
        link.post_send_tensor(torch.zeros(1 << 20, dtype=torch.uint8), wire.payload_tag(ticket.id, 0))  # ...1 MiB comes
        await _expect_reply(link, wire.Code.PAYLOAD)
    assert receiver.stats.rejected["payload"] == 1
    with pytest.raises(KvTransferError):
        await receiver.wait(ticket.id, timeout=1)
    await assert_nothing_held(receiver)


async def test_bad_arguments_fail_before_touching_the_network(sender: KvSender) -> None:
    with pytest.raises(KvTransferError, match="address"):
        await sender.push("no-port-here", 1, [torch.zeros(4)])
    with pytest.raises(KvTransferError, match="contiguous"):
        await sender.push("127.0.0.1:1", 1, [torch.zeros(4, 4).t()])
    with pytest.raises(KvTransferError, match="layers"):
        await sender.push("127.0.0.1:1", 1, [])
    assert sender.stats.endpoints_created == 0
