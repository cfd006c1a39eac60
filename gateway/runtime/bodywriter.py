"""The server's ``BodyWriter``: a streamed response's body pieces written to the client's connection
at once, from whatever callback has them (the upstream connection's read), without an ASGI message.

At tens of open streams each piece arrives alone, and passing it through the handling task (wake
the task, resume the relay, build a message, run ``send``) cost more than relaying it; see
bench/FINDINGS.md. This writes what uvicorn's ``RequestResponseCycle.send`` writes for a body
message of a chunked response, under the same conditions, and declines everything else (a
response not chunked, not started or already complete, a client whose buffer is full) so that it
goes through ``send`` as before. It reads the cycle's state, so the uvicorn version is pinned and
``send`` is among the sources ``http_protocol.py`` records digests of.
"""

from __future__ import annotations

import weakref

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class CycleWriter:
    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weakly: the writer sits in the cycle's own scope, and a cycle of references would keep
        # every request's objects until the collector's next full pass (tests/routes/test_cycles.py).
        self._cycle = weakref.ref(cycle)

    def serves(self, send: Send) -> bool:
        # A bound method: equal to the cycle's own send, not to a middleware's wrapper around it.
        cycle = self._cycle()
        return cycle is not None and send == cycle.send

    def writable(self) -> bool:
        cycle = self._cycle()
        if cycle is None:
            return False
        if cycle.disconnected:
            return True  # dropped, as send() drops it
        return (
            not cycle.flow.write_paused
            and cycle.response_started
            and not cycle.response_complete
            and cycle.chunked_encoding is True
        )

    def write(self, data: bytes) -> None:
        cycle = self._cycle()
        if data and cycle is not None and not cycle.disconnected:
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
