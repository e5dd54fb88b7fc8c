"""Argument types for the `pdserve` flags: a bad number is refused when the command line is read,
naming the flag, instead of after the model has loaded or the broker has answered (or never,
when the broker is down and the service waits for it)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what
    return parse


positive_int = _int_at_least(1, "an integer >= 1")
non_negative_int = _int_at_least(0, "an integer >= 0")


def _float_above(minimum: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_seconds = _float_above(0.0, False, "a number of seconds > 0")
non_negative_float = _float_above(0.0, True, "a number >= 0")
non_negative_seconds = _float_above(0.0, True, "a number of seconds >= 0")


_port_at_least_1 = _int_at_least(1, "a port 1-65535")


def port(text: str) -> int:
    """A TCP port to listen on or connect to, 1-65535."""
    value = _port_at_least_1(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {value}")
    return value


def port_or_any(text: str) -> int:
    """0 (any free port) or 1-65535."""
    return 0 if text.strip() == "0" else port(text)


def log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """A positive number of bytes: 4294967296, 4G, 4GiB, 512M, 1.5g (binary units, as memory is sized)."""
    spec = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (spec[:-1], spec[-1]) if spec and spec[-1] in "kmgt" else (spec, "")
    try:
        value = float(number) * _BYTE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes like 4G or 512MiB, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a size in bytes like 4G or 512MiB, got {text!r}")
    return int(value)


def share(text: str) -> float:
    """A fraction in (0, 1]."""
    value = _float_above(0.0, False, "a fraction in (0, 1]")(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value
