"""The KV transfer wire format: fixed-size control frames and tagged payloads over one UCX endpoint.

A connection starts with one CONNECT frame on the endpoint's stream, carrying a random
connection id chosen by the sender; every later frame is a tagged message with a tag derived
from that id (`frame_tag` sender -> receiver, `reply_tag` back), so that only short-lived
stream receives are ever posted (ucxx 0.52 leaks an endpoint closed under a pending stream
receive). One connection carries transfers one after another. Per transfer:

    sender -> receiver  HELLO  (ticket, layer count, total bytes)           32 bytes
    receiver -> sender  REPLY  (OK: ready, or an error code and a reason)   128 bytes
    sender -> receiver  LAYER i (ticket, layer index, layer bytes)          32 bytes
                        payload i, exactly `layer bytes` long               tag payload_tag(ticket, i)
    ... for every layer, in order ...
    receiver -> sender  REPLY  (OK: accepted, or an error code and a reason)

All integers are little-endian. Sizes are fixed so that a receive can always be posted with a
buffer of known size: nothing a peer sends decides how much the other side allocates.
Never pickle: frames are `struct`-packed and validated field by field.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAGIC = b"PDKV"
VERSION = 1

# magic, version, kind, ticket id, count or index or code, reason length, nbytes
_FRAME = struct.Struct("<4sHHQIIQ")
FRAME_BYTES = _FRAME.size  # 32
REASON_BYTES = 96
REPLY_BYTES = FRAME_BYTES + REASON_BYTES  # 128

# Bounds checked before anything is sized from a frame (a model has tens to hundreds of layers).
MAX_LAYERS = 4096

_TAG_MIX = 0x9E3779B97F4A7C15  # odd, so index -> index * _TAG_MIX is a bijection mod 2**64


class FrameKind(enum.IntEnum):
    HELLO = 1
    LAYER = 2
    REPLY = 3
    CONNECT = 4


class Code(enum.IntEnum):
    """Reply codes. Every non-OK code is also the receiver's reject reason (see `reason`)."""

    OK = 0
    BAD_MAGIC = 1
    BAD_VERSION = 2
    BAD_KIND = 3
    UNKNOWN_TICKET = 4
    EXPIRED_TICKET = 5
    TICKET_BUSY = 6
    LAYER_COUNT = 7
    TOTAL_SIZE = 8
    LAYER_ORDER = 9
    LAYER_SIZE = 10
    PAYLOAD = 11
    TIMEOUT = 12
    CANCELLED = 13
    CLOSING = 14
    INTERNAL = 15
    PEER = 16  # the connection failed mid-transfer (never sent: there is nobody to send it to)

    @property
    def reason(self) -> str:
        """The stats key for this code: `rejected[code.reason]`."""
        return self.name.lower()


class FrameError(ValueError):
    """A frame could not be decoded; `code` says what was wrong with it."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded control frame. `value` is the layer count (HELLO), layer index (LAYER) or
    code (REPLY); `nbytes` is total bytes (HELLO) or layer bytes (LAYER); `reason` only on REPLY."""

    kind: FrameKind
    ticket_id: int
    value: int
    nbytes: int
    reason: str = ""


def connect(connection_id: int) -> bytearray:
    """The first frame of a connection, on the stream; `connection_id` travels as the ticket field."""
    return bytearray(_FRAME.pack(MAGIC, VERSION, FrameKind.CONNECT, connection_id, 0, 0, 0))


def hello(ticket_id: int, num_layers: int, total_nbytes: int) -> bytearray:
    return bytearray(_FRAME.pack(MAGIC, VERSION, FrameKind.HELLO, ticket_id, num_layers, 0, total_nbytes))


def layer(ticket_id: int, index: int, nbytes: int) -> bytearray:
    return bytearray(_FRAME.pack(MAGIC, VERSION, FrameKind.LAYER, ticket_id, index, 0, nbytes))


def reply(ticket_id: int, code: Code, reason: str = "") -> bytearray:
    """A REPLY frame; the reason is cut to REASON_BYTES of UTF-8 (on a character boundary)."""
    raw = reason.encode("utf-8")[:REASON_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
    out = bytearray(REPLY_BYTES)
    _FRAME.pack_into(out, 0, MAGIC, VERSION, FrameKind.REPLY, ticket_id, int(code), len(raw), 0)
    out[FRAME_BYTES : FRAME_BYTES + len(raw)] = raw
    return out


def decode(buf: bytes | bytearray | memoryview, expect: FrameKind) -> Frame:
    """Decode one frame of kind `expect` from untrusted bytes; raises FrameError with a code."""
    size = REPLY_BYTES if expect is FrameKind.REPLY else FRAME_BYTES
    if len(buf) != size:
        raise FrameError(Code.BAD_KIND, f"{expect.name} frame must be {size} bytes, got {len(buf)}")
    magic, version, kind, ticket_id, value, reason_len, nbytes = _FRAME.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FrameError(Code.BAD_MAGIC, f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(Code.BAD_VERSION, f"wire version {version}, this side speaks {VERSION}")
    if kind != expect:
        raise FrameError(Code.BAD_KIND, f"frame kind {kind}, expected {expect.name}")
    reason = ""
    if expect is FrameKind.REPLY:
        if reason_len > REASON_BYTES:
            raise FrameError(Code.BAD_KIND, f"reply reason length {reason_len} > {REASON_BYTES}")
        reason = bytes(buf[FRAME_BYTES : FRAME_BYTES + reason_len]).decode("utf-8", errors="replace")
        try:
            value = Code(value)
        except ValueError:
            value = Code.INTERNAL
    return Frame(FrameKind(kind), ticket_id, value, nbytes, reason)


# Tag spaces: control frames have the top bit set, payloads never do.
_CONTROL = 1 << 63
CONNECTION_ID_BITS = 62


def frame_tag(connection_id: int) -> int:
    """Tag of frames from sender to receiver on one connection."""
    return _CONTROL | (connection_id << 1)


def reply_tag(connection_id: int) -> int:
    """Tag of replies from receiver to sender on one connection."""
    return _CONTROL | (connection_id << 1) | 1


def payload_tag(ticket_id: int, index: int) -> int:
    """The UCX tag of layer `index`'s payload. Tags are matched worker-wide, so they are unique
    per (ticket, layer): distinct layers of one ticket can never collide, and tickets are random."""
    return (ticket_id ^ ((index + 1) * _TAG_MIX)) & (_CONTROL - 1)
