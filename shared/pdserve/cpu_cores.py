"""CPU core lists as flags give them: '3', '0-1', '0,2-3'."""

from __future__ import annotations

import os
from pathlib import Path


def parse_cores(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}; raises ValueError on anything else."""
    cores: set[int] = set()
    for item in text.split(","):
        lo, _, hi = item.partition("-")
        first, last = int(lo), int(hi or lo)
        if first < 0 or last < first:  # '3-1' would otherwise pin to no core at all
            raise ValueError(f"bad core range {item!r}")
        cores.update(range(first, last + 1))
    return cores


def online_cores() -> set[int]:
    """The cores this machine has online. Not this process's own affinity: a pinned load
    generator starts clusters whose processes may be pinned to other cores than its own."""
    try:
        return parse_cores(Path("/sys/devices/system/cpu/online").read_text().strip())
    except (OSError, ValueError):
        return set(range(os.cpu_count() or 1))


def unknown_cores(cores: set[int]) -> list[int]:
    """Those of `cores` this machine does not have online, sorted."""
    return sorted(cores - online_cores())


def parse_pin_spec(spec: str | None, roles: frozenset[str]) -> dict[str, set[int]]:
    """`pdserve up --pin` syntax, 'router=0;prefill=0;decode=1;worker=0-1' -> role -> cores.
    ValueError names the bad entry: not role=cores, a role not in `roles`, or cores not online."""
    pins: dict[str, set[int]] = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        role, _, cores = (text.strip() for text in part.partition("="))
        try:
            pins[role] = parse_cores(cores)
        except ValueError:
            raise ValueError(f"bad --pin entry {part!r}; expected role=cores like decode=1 or worker=0-1") from None
        if role not in roles:
            raise ValueError(f"bad --pin entry {part!r}: no role {role!r}; roles {sorted(roles)}")
        if missing := unknown_cores(pins[role]):
            raise ValueError(f"bad --pin entry {part!r}: core(s) {missing} are not online here")
    return pins
