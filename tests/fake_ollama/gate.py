"""Lockstep control: the fake writes a chunk only after the test releases it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading


class Passage(enum.Enum):
    GRANTED = "granted"
    ENDED = "ended"  # the exchange ended (client gone or server stopping)
    TIMED_OUT = "timed_out"


class StepGate:
    """Counts permits handed out by the test thread and consumed by the server loop.

    A gated response writes its first chunk freely; every later body write (one NDJSON
    line, one SSE event group) takes one permit. Waits are bounded by `timeout` so a
    test that forgets to release cannot hang the suite: the fake then cuts the connection.
    """

    def __init__(self, permits: int = 0, *, timeout: float = 10.0) -> None:
        self._cond = threading.Condition()
        self._permits = permits
        self._sent = 0
        self._timeout = timeout
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def release(self, n: int = 1) -> None:
        """Allow `n` more chunks to be written."""
        with self._cond:
            self._permits += n
            waiters = list(self._waiters)
        for loop, event in waiters:
            # a closed loop has nobody waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    @property
    def sent(self) -> int:
        """Chunks written through this gate so far."""
        with self._cond:
            return self._sent

    def wait_sent(self, n: int, timeout: float = 5.0) -> None:
        """Block until `n` chunks were written; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._sent >= n, timeout):
                raise TimeoutError(f"only {self._sent} of {n} chunks were sent")

    def mark_sent(self) -> None:
        with self._cond:
            self._sent += 1
            self._cond.notify_all()

    async def acquire(self, ended: asyncio.Event) -> Passage:
        """Take one permit, waiting for a release, the end of the exchange, or the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            released = asyncio.Event()
            waiter = (loop, released)
            with self._cond:
                if self._permits > 0:
                    self._permits -= 1
                    return Passage.GRANTED
                self._waiters.add(waiter)
            try:
                outcome = await _first(released, ended, deadline)
            finally:
                with self._cond:
                    self._waiters.discard(waiter)
            if outcome is not Passage.GRANTED:
                return outcome


async def _first(released: asyncio.Event, ended: asyncio.Event, deadline: float) -> Passage:
    if ended.is_set():
        return Passage.ENDED
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        return Passage.TIMED_OUT
    waits = {asyncio.ensure_future(released.wait()), asyncio.ensure_future(ended.wait())}
    try:
        await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    if ended.is_set():
        return Passage.ENDED
    return Passage.GRANTED if released.is_set() else Passage.TIMED_OUT
