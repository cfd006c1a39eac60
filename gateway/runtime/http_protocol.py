"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, handing request bodies over uncopied.

uvicorn appends every body piece the parser delivers to a ``bytearray`` and gives the application
``bytes(that)``: two copies of every byte uploaded, on top of the parser's own. For a relay those
copies are most of the CPU a large upload costs (a 1 GiB blob: about half). Here a piece that
arrives while nothing is waiting is stored as it is, and ``bytes(piece)`` is the piece itself, so
it reaches the application without a copy; pieces arriving while one is already waiting are joined
in a bytearray as before, which the flow control bounds to its 64 KiB high-water mark plus one read.

It replaces uvicorn's ``on_body`` outright and relies on how ``RequestResponseCycle.receive``
hands ``cycle.body`` over, so the uvicorn version it was checked against is pinned exactly
(pyproject.toml), and a test compares the source of both with the digests below: read the new
code before moving the pin, then record its digests here.
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# SHA-256 of inspect.getsource() of the uvicorn code this module was checked against (0.54.0).
CHECKED_UVICORN_SOURCES = {
    "HttpToolsProtocol.on_body": "dba9c32aeba35b6ae10722f86232d44d93fda42d97711244eeaa51c0a1f3e1c9",
    "RequestResponseCycle.receive": "8124ae006be71184810da91d586b97c4b3b9ae43e28984bc94f81e26d20af3e6",
}


class GatewayHttpProtocol(HttpToolsProtocol):
    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        waiting: bytes | bytearray = cycle.body
        if not waiting:
            # uvicorn types this a bytearray; receive() only needs bytes(body) and len().
            cycle.body = body  # type: ignore[assignment]
        else:
            if isinstance(waiting, bytes):
                # Joining: grow a bytearray in place, as uvicorn does (bytes would be copied whole
                # for every piece, quadratic over a read full of tiny chunks).
                waiting = bytearray(waiting)
            waiting += body
            cycle.body = waiting
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
