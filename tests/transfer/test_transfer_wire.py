"""The wire format alone: frames round-trip, and malformed bytes are named, never trusted."""

from __future__ import annotations

import struct

import pytest
from pdserve.transfer import wire


def test_frames_round_trip() -> None:
    hello = wire.decode(wire.hello(7, 32, 1 << 30), wire.FrameKind.HELLO)
    assert (hello.ticket_id, hello.value, hello.nbytes) == (7, 32, 1 << 30)
    layer = wire.decode(wire.layer(7, 31, 4096), wire.FrameKind.LAYER)
    assert (layer.ticket_id, layer.value, layer.nbytes) == (7, 31, 4096)
    reply = wire.decode(wire.reply(7, wire.Code.LAYER_SIZE, "layer 3: 10 bytes"), wire.FrameKind.REPLY)
    assert (reply.value, reply.reason) == (wire.Code.LAYER_SIZE, "layer 3: 10 bytes")
    assert len(wire.hello(1, 1, 1)) == wire.FRAME_BYTES == 32
    assert len(wire.reply(1, wire.Code.OK)) == wire.REPLY_BYTES == 128


def test_reply_reason_is_cut_on_a_character_boundary() -> None:
    reason = "é" * 100  # 200 bytes of UTF-8
    decoded = wire.decode(wire.reply(1, wire.Code.INTERNAL, reason), wire.FrameKind.REPLY)
    assert decoded.reason == "é" * (wire.REASON_BYTES // 2)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b"XXXX" + b[4:], wire.Code.BAD_MAGIC),
        (lambda b: b[:4] + struct.pack("<H", 99) + b[6:], wire.Code.BAD_VERSION),
        (lambda b: b[:6] + struct.pack("<H", wire.FrameKind.LAYER) + b[8:], wire.Code.BAD_KIND),
        (lambda b: b[:-1], wire.Code.BAD_KIND),
    ],
)
def test_malformed_frames_are_rejected_with_a_code(mutate, code) -> None:  # type: ignore[no-untyped-def]
    raw = bytes(wire.hello(5, 2, 64))
    with pytest.raises(wire.FrameError) as info:
        wire.decode(mutate(raw), wire.FrameKind.HELLO)
    assert info.value.code is code


def test_a_reply_cannot_claim_a_longer_reason_than_it_carries() -> None:
    raw = bytearray(wire.reply(5, wire.Code.OK))
    struct.pack_into("<I", raw, 20, wire.REASON_BYTES + 1)
    with pytest.raises(wire.FrameError):
        wire.decode(raw, wire.FrameKind.REPLY)


def test_payload_tags_differ_per_layer_and_ticket() -> None:
    tags = {wire.payload_tag(t, i) for t in (1, 2, 2**62 + 3) for i in range(wire.MAX_LAYERS)}
    assert len(tags) == 3 * wire.MAX_LAYERS
    assert all(0 <= tag < 2**64 for tag in tags)
