"""glibc malloc thresholds for a process that relays large buffers.

Every socket read and every body piece the gateway relays is a new bytes object of up to a few
hundred KiB. glibc's defaults (a dynamic mmap threshold from 128 KiB; the heap's top trimmed past
twice that) may hand such blocks back to the kernel on free and fault fresh zeroed pages in for
the next ones, depending on how the heap happens to be laid out. On a 1 GiB upload that was up to
~97,000 minor page faults, a third of the gateway's CPU. Fixed thresholds keep the blocks in the
heap for reuse. The price: blocks up to ``MMAP_THRESHOLD`` always come from a heap, where a
surviving small object can keep the freed space around it mapped, and each malloc arena (one per
thread that allocates, at most 8 per core) may keep up to ``TRIM_THRESHOLD`` of freed memory at
its top. glibc's own dynamic threshold lets both grow further (to 32 MiB) after a large body.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 20  # above the largest routine read (uvloop's is 256 KB)
# Measured per GiB uploaded: 8 MiB left ~0 faults, 4 MiB ~2,000, 2 MiB up to ~10,000 (of ~97,000).
TRIM_THRESHOLD = 4 << 20

# An operator's own malloc tuning wins over ours.
_OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_OPERATOR_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def operator_tuned(environ: Mapping[str, str]) -> bool:
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(name in environ for name in _OPERATOR_VARIABLES) or any(name in tunables for name in _OPERATOR_TUNABLES)


def glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc; None for musl or any other."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        version = None
    if not version or not version.startswith("glibc"):
        return None
    return ctypes.CDLL(None)


def keep_large_blocks(environ: Mapping[str, str] = os.environ) -> bool:
    """Fix the thresholds for this process; False where not glibc or the operator set them."""
    if operator_tuned(environ):
        return False
    libc = glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success. Trim first: a fixed mmap threshold alone would leave the
    # default trim threshold (128 KiB) with no dynamic adjustment, worse than glibc's default.
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
