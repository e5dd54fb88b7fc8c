"""Keep freed host memory in the process instead of handing it back to the OS.

glibc returns large freed blocks (attention temporaries of several MB, freed every layer of
every step) to the kernel, and every step then page-faults them back in. On our VMs that made
CPU decode attention 2-3x slower (docs/benchmarks.md). Raising the trim and mmap thresholds
lets malloc reuse them. Process-wide, so the engine calls it once when it serves on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Apply once; True if glibc accepted the settings (False elsewhere, harmlessly)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _done = bool(mallopt(M_TRIM_THRESHOLD, _THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, _THRESHOLD))
    return _done
