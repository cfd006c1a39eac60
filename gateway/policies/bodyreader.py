"""Reading what the gateway needs of a JSON body without stalling everyone else.

A body up to ``INLINE_LIMIT`` is read here, on the event loop: its parse costs a few milliseconds
however it is built (the costliest shapes, a flat object of tiny members or an array of empty
objects, took 4-5 ms for 64 KiB; text 0.1 ms). A larger one goes to a worker process
(``gateway.ollama.bodyworker``), one body at a time, and the event loop only moves its bytes: the
parse of a million members (seconds of CPU, with the GIL held throughout) no longer stalls the
streams and probes beside it. The worker is started on the first large body, and started again
after a body larger than ``RECYCLE_AFTER`` (its heap grew for it) or when it died. Either way the
answer is the same ``BodyFacts``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
from pathlib import Path

import gateway
from gateway.errors import BadRequest, GatewayBusy
from gateway.ollama.bodyfacts import BodyFacts
from gateway.ollama.bodyworker import LENGTH

log = logging.getLogger("gateway.bodies")

# The folder holding this package, first on the worker's path, wherever the gateway runs from.
_ROOT = str(Path(gateway.__file__).resolve().parent.parent)

INLINE_LIMIT = 64 * 1024
RECYCLE_AFTER = 16 * 1024 * 1024


class BodyReader:
    def __init__(self, *, inline_limit: int = INLINE_LIMIT, recycle_after: int = RECYCLE_AFTER) -> None:
        self._inline = inline_limit
        self._recycle = recycle_after
        self._worker: asyncio.subprocess.Process | None = None
        # One body at a time: the worker answers in order, and a parse uses one core.
        self._turn = asyncio.Lock()
        self._closed = False

    async def read(self, raw: bytes) -> BodyFacts:
        """The facts of ``raw``; ``BadRequest`` where Ollama would refuse to decode it."""
        if len(raw) <= self._inline:
            return BodyFacts.read(raw)
        # Shielded: a request cancelled meanwhile (its client left) leaves the worker's answer to
        # be read all the same, or the next body would get this one's.
        asked = asyncio.ensure_future(self._ask(raw))
        asked.add_done_callback(_retrieved)
        kind, value = await asyncio.shield(asked)
        if kind == "refused":
            raise BadRequest(str(value))
        assert isinstance(value, BodyFacts)
        return value

    async def close(self) -> None:
        self._closed = True
        async with self._turn:
            await self._stop()

    async def _ask(self, raw: bytes) -> tuple[str, object]:
        async with self._turn:
            if self._closed:
                raise GatewayBusy("the gateway is stopping")
            # A worker that died while idle fails the write: a fresh one gets the body once more.
            data = None
            for fresh in (self._worker is None, True):
                worker = self._worker or await self._start()
                data = await self._exchange(worker, raw)
                if data is not None or fresh:
                    break
            if data is None:
                log.error("the process that reads large request bodies ended while reading one of %d bytes", len(raw))
                raise GatewayBusy("the request body could not be read now, try again later")
            if len(raw) > self._recycle:
                await self._stop()
        answer: tuple[str, object] = pickle.loads(data)  # noqa: S301 (our own child's answer)
        return answer

    async def _exchange(self, worker: asyncio.subprocess.Process, raw: bytes) -> bytes | None:
        """The worker's answer for ``raw``; None (and the worker stopped) when it is gone."""
        assert worker.stdin is not None
        assert worker.stdout is not None
        try:
            worker.stdin.write(len(raw).to_bytes(LENGTH, "big"))
            worker.stdin.write(raw)
            await worker.stdin.drain()
            size = int.from_bytes(await worker.stdout.readexactly(LENGTH), "big")
            return await worker.stdout.readexactly(size)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self._stop()
            return None

    async def _start(self) -> asyncio.subprocess.Process:
        path = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
        self._worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.ollama.bodyworker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        return self._worker

    async def _stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.stdin is not None:
            worker.stdin.close()  # its loop ends at end of input
        try:
            await asyncio.wait_for(worker.wait(), 5.0)
        except TimeoutError:
            worker.kill()
            await worker.wait()


def _retrieved(task: asyncio.Future[tuple[str, object]]) -> None:
    # Its request may be gone: the outcome is not left unread (asyncio would log it).
    if not task.cancelled():
        task.exception()


class BodyBudget:
    """Bytes of request bodies held in memory at once, across the process.

    A body takes its size (its ``Content-Length``, or piece by piece as a chunked one arrives)
    before it is read and gives it back when its request is over; one that does not fit waits
    for others to give back, for at most ``wait`` seconds, then gets ``GatewayBusy`` (503).
    """

    def __init__(self, capacity: int, *, wait: float) -> None:
        self.capacity = capacity
        self.used = 0
        self._wait = wait
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    async def take(self, size: int) -> None:
        if self.used + size <= self.capacity:
            self.used += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self._wait):
                await granted
        except BaseException as error:  # cleanup only: the waiter leaves the line either way
            if granted.done() and not granted.cancelled():
                self.give_back(size)  # granted just as it gave up
            else:
                self._waiting.remove(entry)
            if isinstance(error, TimeoutError):
                raise GatewayBusy("too many request bodies are being read now, try again later") from None
            raise

    def give_back(self, size: int) -> None:
        self.used -= size
        for entry in list(self._waiting):
            wanted, granted = entry
            if self.used + wanted <= self.capacity:
                self._waiting.remove(entry)
                self.used += wanted
                granted.set_result(None)
