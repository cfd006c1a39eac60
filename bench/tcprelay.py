"""A transparent TCP relay on uvloop: bytes from each client to a connection of its own upstream and
back, nothing parsed, nothing decided. What relaying costs in Python on this event loop and kernel,
before any HTTP: the floor that ``bench.floor`` measures the gateway against.

Run as ``python -m bench.tcprelay --upstream PORT``; it prints ``READY 127.0.0.1:port`` once
listening. The upstream connection is opened when the client's first bytes arrive (as a proxy
opens one for a request), and the client is not read meanwhile; once both are connected, a side
that reads slower than the other sends pauses the other's reading (the transports' own high-water
marks), so the relay holds a bounded amount however the two differ.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

READY = "READY"


class _Side(asyncio.Protocol):
    """One of a pair of connections: what it reads goes to ``peer``; its end ends the peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # read before the peer was connected
        self.ended = False  # its reader saw EOF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self.pending.append(data)
        elif peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None:
            return True  # not paired yet: passed on once it is
        return self.pass_end()

    def pass_end(self) -> bool:
        """This side's end, to its peer: half-closed while the other direction goes on (True), or
        both closed once both directions are over (False)."""
        peer = self.peer
        if peer is not None and not peer.ended and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Flow control: a full write buffer here stops reading on the other side until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self._upstream = upstream
        self._connecting: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._connect_once()

    def eof_received(self) -> bool:
        keep = super().eof_received()
        self._connect_once()
        return keep

    def _connect_once(self) -> None:
        if self._connecting is not None or self.transport is None:
            return
        if self.ended and not self.pending:
            self.transport.close()  # gone without a byte: nothing to carry
            return
        if not self.ended:
            # Nothing more is read until the upstream is there: what waits is one read at most.
            self.transport.pause_reading()
        # Held: a task nothing refers to may be collected before it has run.
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self._upstream
        try:
            transport, upstream = await asyncio.get_running_loop().create_connection(_Side, host, port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or upstream.transport is None:  # either side gone meanwhile
            transport.close()
            if self.transport is not None:
                self.transport.close()
            return
        self.peer, upstream.peer = upstream, self
        upstream.transport.writelines(self.pending)
        self.transport.writelines(upstream.pending)
        self.pending.clear()
        upstream.pending.clear()
        for side in (self, upstream):
            if side.ended and not side.pass_end():
                return
        if self.transport is not None and not self.ended:
            self.transport.resume_reading()


async def serve(port: int, upstream: tuple[str, int], lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream), "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"{READY} {bound[0]}:{bound[1]}", flush=True)
    async with server:
        # Bounded: a relay left behind by a killed harness ends by itself.
        await asyncio.sleep(lifetime)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tcprelay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=int, required=True, help="the upstream's port on 127.0.0.1")
    parser.add_argument("--lifetime", type=float, default=900.0, help="seconds before it exits by itself")
    args = parser.parse_args()
    uvloop.run(serve(args.port, ("127.0.0.1", args.upstream), args.lifetime))


if __name__ == "__main__":
    main()
