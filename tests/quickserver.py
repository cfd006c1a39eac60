"""uvicorn's server, stopping as soon as it is asked.

uvicorn notices ``should_exit`` on a 0.1 s tick and, when stopping, pauses 0.1 s for its
connections to hear of it, even when it has none. Hundreds of tests start and stop servers in
threads, so those pauses were most of the suite's time. Here a stop wakes the loop at once, and an
idle server skips the pause; a server with connections still goes through uvicorn's own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import uvicorn


class QuickServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._stopping = asyncio.Event()
        await super().startup(sockets)
        self.loop = asyncio.get_running_loop()
        listening = getattr(self.config.app, "listening", None)
        if self.started and isinstance(listening, asyncio.Event):
            listening.set()  # the gateway's start-up lines wait for it, as GatewayServer sets it
        self.ready.set()

    async def main_loop(self) -> None:
        assert self._stopping is not None
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # A connection accepted just before the close is counted a few loop steps later.
        for _ in range(3):
            await asyncio.sleep(0)
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # closing again is harmless
            return
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), self.config.timeout_graceful_shutdown)
        if not self.force_exit:
            await self.lifespan.shutdown()

    def stop(self) -> None:
        """Ask the server to stop, from any thread."""
        self.should_exit = True
        loop, stopping = self.loop, self._stopping
        if loop is not None and stopping is not None:
            # The loop may have closed in between.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
