"""msgpack encoding of protocol messages, and checked decoding of untrusted bytes.

Every message is a msgpack map with `v` (protocol version) and `type`. Decoding checks the
version, the type and every field's type before a dataclass is built; nothing received is
ever unpickled or evaluated. Unknown extra fields are ignored, so a newer peer can add
optional fields without breaking an older one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

import msgpack

from pdserve.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 << 20  # control messages only; KV travels over UCX

M = TypeVar("M")


def encode(message: object) -> bytes:
    assert dataclasses.is_dataclass(message) and not isinstance(message, type)
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    body["v"] = PROTOCOL_VERSION
    body["type"] = type(message).__name__
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes, cls: type[M]) -> M:
    """Parse bytes into a `cls` message or raise ProtocolError saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    return from_body(body, cls)


def from_body(body: object, cls: type[M]) -> M:
    if not isinstance(body, dict):
        raise ProtocolError("message is not a map")
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this service speaks {PROTOCOL_VERSION})")
    if body.get("type") != cls.__name__:
        raise ProtocolError(f"expected a {cls.__name__} message, got type {body.get('type')!r}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.__name__}: missing field {f.name!r}")
            continue
        values[f.name] = _check(body[f.name], hints[f.name], f"{cls.__name__}.{f.name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


_hint_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _hint_cache:
        _hint_cache[cls] = typing.get_type_hints(cls)
    return _hint_cache[cls]


def _check(value: object, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _check(value, option, where)
            except ProtocolError:
                continue
        raise ProtocolError(f"{where}: {type(value).__name__} is not {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ProtocolError(f"{where}: expected null")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = get_args(hint)
        return [_check(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map, got {type(value).__name__}")
        key_hint, value_hint = get_args(hint)
        return {_check(k, key_hint, where): _check(v, value_hint, where) for k, v in value.items()}
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
    if hint in (str, bool, bytes):
        if isinstance(value, hint):
            return value
        raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    raise AssertionError(f"{where}: unsupported field type {hint}")
