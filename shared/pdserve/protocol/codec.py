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
from collections.abc import Callable
from typing import Any, TypeVar, Union, get_args, get_origin

import msgpack

from pdserve.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 << 20  # control messages only; KV travels over UCX

M = TypeVar("M")


def encode(message: object) -> bytes:
    names = _field_names.get(type(message))
    if names is None:
        assert dataclasses.is_dataclass(message) and not isinstance(message, type)
        fields = dataclasses.fields(message)
        names = _field_names[type(message)] = (
            tuple(f.name for f in fields if f.default is not None),
            tuple(f.name for f in fields if f.default is None),
        )
    always, unless_none = names
    body = {name: getattr(message, name) for name in always}
    # Optional fields left at their None default are left out: decoding gives them the default
    # back, and a token's chunk carries a dozen of them (less to pack, send and check per token).
    for name in unless_none:
        value = getattr(message, name)
        if value is not None:
            body[name] = value
    body["v"] = PROTOCOL_VERSION
    body["type"] = type(message).__name__
    return msgpack.packb(body, use_bin_type=True)


# per message class, looked up once (encode runs per token): the fields always sent, and those
# sent only when not None (their default)
_field_names: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def decode(data: bytes, cls: type[M]) -> M:
    """Parse bytes into a `cls` message or raise ProtocolError saying what is wrong."""
    return from_body(unpack(data), cls)


def unpack(data: bytes) -> object:
    """The msgpack body of a message, not yet checked against any message class."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not msgpack: {type(exc).__name__}: {exc}") from None


def from_body(body: object, cls: type[M]) -> M:
    if not isinstance(body, dict):
        raise ProtocolError("message is not a map")
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this service speaks {PROTOCOL_VERSION})")
    if body.get("type") != cls.__name__:
        raise ProtocolError(f"expected a {cls.__name__} message, got type {body.get('type')!r}")
    values: dict[str, Any] = {}
    for name, required, check, where in _plan(cls):
        if name in body:
            values[name] = check(body[name], where)
        elif required:
            raise ProtocolError(f"{cls.__name__}: missing field {name!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


# A field's checker: (received value, where for the error message) -> the value to use.
_Checker = Callable[[object, str], Any]
_plans: dict[type, list[tuple[str, bool, _Checker, str]]] = {}


def _plan(cls: type) -> list[tuple[str, bool, _Checker, str]]:
    """(field, required, checker, where) per field of `cls`, built once: the router decodes a
    TokenChunk per streamed token, and walking the type hints every time cost more than msgpack."""
    plan = _plans.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = [
            (
                f.name,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _checker(hints[f.name]),
                f"{cls.__name__}.{f.name}",
            )
            for f in dataclasses.fields(cls)
        ]
        _plans[cls] = plan
    return plan


def _checker(hint: Any) -> _Checker:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        nullable = type(None) in get_args(hint)
        options = [_checker(option) for option in get_args(hint)]

        def check_union(value: object, where: str) -> Any:
            if value is None and nullable:
                return None  # the common case (an optional field left empty), without a failed try first
            for option in options:
                try:
                    return option(value, where)
                except ProtocolError:
                    continue
            raise ProtocolError(f"{where}: {type(value).__name__} is not {hint}")

        return check_union
    if hint is type(None):
        return _check_none
    if hint is Any:
        return _check_any
    if origin is list:
        (item_hint,) = get_args(hint)
        item = _checker(item_hint)

        def check_list(value: object, where: str) -> Any:
            if not isinstance(value, list):
                raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
            return [item(v, where) for v in value]

        if item_hint is int:

            def check_int_list(value: object, where: str) -> Any:
                # Token id lists (a prompt of thousands): all checked at C speed, the same
                # answer as check_list (a bool is no int), which finds the culprit otherwise.
                if type(value) is list and set(map(type, value)) <= {int}:
                    return value
                return check_list(value, where)

            return check_int_list
        return check_list
    if origin is dict:
        key, val = (_checker(h) for h in get_args(hint))

        def check_dict(value: object, where: str) -> Any:
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}: expected a map, got {type(value).__name__}")
            return {key(k, where): val(v, where) for k, v in value.items()}

        return check_dict
    if hint is float:
        return _check_float
    if hint is int:
        return _check_int
    if hint in (str, bool, bytes):

        def check_exact(value: object, where: str) -> Any:
            if isinstance(value, hint):
                return value
            raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")

        return check_exact
    raise AssertionError(f"unsupported field type {hint}")


def _check_none(value: object, where: str) -> None:
    if value is None:
        return None
    raise ProtocolError(f"{where}: expected null")


def _check_any(value: object, where: str) -> Any:
    return value


def _check_float(value: object, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")


def _check_int(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
