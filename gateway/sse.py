"""Token counts for /v1 streams whose client did not ask for them, asked for and hidden again.

Token limits and usage accounting need real counts, and /v1 streams only carry them when the
client sets ``stream_options.include_usage``. ``StreamUsagePolicy`` sets it on such a request, and
``UsageStripper`` removes what that added before the client sees it: the closing
``"choices":[]`` usage event, and the zero ``usage`` field /v1/completions then repeats on every
chunk. Events are passed on whole, as they complete.
"""

from __future__ import annotations

import re

from gateway.flow import Flow
from gateway.inbound import Inbound

# The /v1 routes whose streams carry usage only when asked.
_USAGE_ON_REQUEST = frozenset({"/v1/chat/completions", "/v1/completions"})


class StreamUsagePolicy:
    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        body = flow.json
        if body is None or flow.route.name not in _USAGE_ON_REQUEST or body.get("stream") is not True:
            return
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return
        merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        flow.body = body.replace("stream_options", merged)
        flow.transforms.append(UsageStripper())

    def finish(self, flow: Flow, admitted: None) -> None:
        pass


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
