"""Hiding the usage the gateway asked for on a client's behalf from an OpenAI SSE stream.

Token limits need real counts, and /v1 streams only carry them when the client sets
``stream_options.include_usage``. When the gateway had to set it (``policies/usagerequest.py``), this
transform removes what that added before the client sees it: the closing ``"choices":[]`` usage
event, and the zero ``usage`` field /v1/completions then repeats on every chunk. Events are passed
on whole, as they complete.
"""

from __future__ import annotations

import re

_USAGE_FIELD = re.compile(rb',"usage":\{[^{}]*\}')


class UsageStripper:
    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffered = self._pending + data
        cut = buffered.rfind(b"\n\n")
        if cut < 0:
            self._pending = buffered
            return b""
        complete, self._pending = buffered[: cut + 2], buffered[cut + 2 :]
        if b'"usage"' not in complete:
            return complete
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            if b'"choices":[]' in event and b'"usage"' in event:
                continue
            kept.append(_USAGE_FIELD.sub(b"", event) + b"\n\n")
        return b"".join(kept)

    def end(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending
