"""Request ids: the client's own if it looks like one, otherwise a fresh random one."""

from __future__ import annotations

import os
import re

_SANE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class _FreshIds:
    """128 random bits each, cut from one read of the system's random source: the same ids as one
    read per request, without a system call for each."""

    BATCH = 256

    def __init__(self) -> None:
        self._pool = b""
        self._taken = 0

    def next(self) -> bytes:
        if self._taken >= len(self._pool):
            self._pool, self._taken = os.urandom(16 * self.BATCH).hex().encode(), 0
        start = self._taken
        self._taken = start + 32
        return self._pool[start : self._taken]


_fresh = _FreshIds()


def request_id(offered: bytes | None) -> bytes:
    if offered is not None and _SANE.fullmatch(offered):
        return offered
    return _fresh.next()
