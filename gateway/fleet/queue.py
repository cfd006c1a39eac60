"""Fair sharing of the upstream: a cap on inference requests in flight, and a fair queue behind it.

Requests beyond the cap wait in one FIFO per key, and free slots are handed out by deficit
round-robin across keys (a key's weight is how many requests it may take per turn). A key with
fifty requests queued therefore cannot push another key's single request behind all fifty; it
waits at most about one turn. Waiting is bounded; a waiter that gives up or whose client leaves is
removed at once and never forwarded.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gateway.errors import QueueTimeout


@dataclass(eq=False, slots=True)
class _Waiter:
    key: str
    future: asyncio.Future[None]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A slot on the upstream; give it back with ``FairQueue.release``."""

    waited: float  # seconds spent queued
    position: int  # requests waiting ahead when this one arrived (0: no wait)


class FairQueue:
    def __init__(self, capacity: int, *, timeout: float) -> None:
        self.capacity = capacity
        self._timeout = timeout
        self.in_use = 0
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._deficit: dict[str, float] = {}
        self._weights: dict[str, int] = {}
        # The key whose turn ended last: a key that starts waiting goes ahead of it, or a key
        # alone in the queue would get a second turn before the newcomer had its first.
        self._finished: str | None = None
        self.waiting = 0

    async def acquire(self, key: str, weight: int = 1) -> Ticket:
        if self.in_use < self.capacity and not self.waiting:
            self.in_use += 1
            return Ticket(0.0, 0)
        position = self.waiting
        waiter = _Waiter(key, asyncio.get_running_loop().create_future())
        self._weights[key] = max(weight, 1)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if self._finished is not None and next(iter(self._queues)) == self._finished:
                self._queues.move_to_end(key, last=False)
        queue.append(waiter)
        self.waiting += 1
        try:
            async with asyncio.timeout(self._timeout):
                await waiter.future
        except BaseException as error:
            if waiter.future.done() and not waiter.future.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            else:
                self._remove(waiter)
            if isinstance(error, TimeoutError):
                raise QueueTimeout(
                    f"the upstream is busy: no slot became free within {self._timeout:g} s",
                    headers={"Retry-After": "5"},
                ) from None
            raise
        return Ticket(time.perf_counter() - waiter.enqueued, position + 1)

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting request has been queued (0 when none waits)."""
        heads = [queue[0].enqueued for queue in self._queues.values() if queue]
        return time.perf_counter() - min(heads) if heads else 0.0

    def release(self) -> None:
        self.in_use -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.in_use < self.capacity and self._queues:
            waiter = self._next()
            self.waiting -= 1
            if waiter.future.cancelled():
                # Its task was cancelled and has not run yet to leave the queue (several requests
                # ended at once, as at shutdown): it takes no slot.
                continue
            self.in_use += 1
            waiter.future.set_result(None)

    def _next(self) -> _Waiter:
        key, queue = next(iter(self._queues.items()))
        if self._deficit.get(key, 0.0) < 1:
            self._deficit[key] = self._deficit.get(key, 0.0) + self._weights.get(key, 1)
        waiter = queue.popleft()
        self._deficit[key] -= 1
        if not queue:
            del self._queues[key]
            self._deficit.pop(key, None)
            self._finished = key
        elif self._deficit[key] < 1:
            # This key's turn is over: the next key goes first.
            self._queues.move_to_end(key)
            self._finished = key
        return waiter

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.key)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        self.waiting -= 1
        if not queue:
            del self._queues[waiter.key]
            self._deficit.pop(waiter.key, None)
