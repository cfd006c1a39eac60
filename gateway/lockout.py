"""The authentication lockout: too many failed authentications from one address lock it out,
which slows down key guessing.

While an address is locked, every request from it is refused with 429 before any key is even
looked at; other addresses, and valid keys used from them, are unaffected. Memory is bounded: the
table never holds more than ``max_addresses`` entries.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import AuthThrottled


class Lockout:
    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._clock = clock
        # address -> (failures in the current window, window start, locked until)
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def check(self, address: str) -> None:
        entry = self._entries.get(address)
        if entry is None:
            return
        remaining = entry[2] - self._clock()
        if remaining > 0:
            raise AuthThrottled(
                "too many failed authentication attempts; try again later",
                headers={"Retry-After": str(math.ceil(remaining))},
            )

    def failed(self, address: str) -> None:
        now = self._clock()
        count, start, locked = self._entries.pop(address, (0, now, 0.0))
        if now - start > self._window:
            count, start = 0, now
        count += 1
        if count >= self._limit:
            locked, count, start = now + self._window, 0, now
        self._entries[address] = (count, start, locked)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def succeeded(self, address: str) -> None:
        entry = self._entries.get(address)
        if entry is not None and entry[2] <= self._clock():
            del self._entries[address]
