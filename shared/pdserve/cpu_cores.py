"""CPU core lists as flags give them: '3', '0-1', '0,2-3'."""

from __future__ import annotations


def parse_cores(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}; raises ValueError on anything else."""
    cores: set[int] = set()
    for item in text.split(","):
        lo, _, hi = item.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores
