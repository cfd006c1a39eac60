"""Request ids: the client's own if it looks like one, otherwise a fresh random one."""

from __future__ import annotations

import os
import re

_SANE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id(offered: bytes | None) -> bytes:
    if offered is not None and _SANE.fullmatch(offered):
        return offered
    return os.urandom(16).hex().encode()
