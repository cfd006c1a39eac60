"""The authentication lockout: wrong keys from one address past a limit are refused without a
look at the store, which cuts the cost and the noise of a flood of guesses.

Keys carry 256 random bits, so guessing is hopeless; the lockout exists to protect the gateway,
never to punish the people behind an address. So:

* only a wrong credential counts (a request that presents none is a plain 401: the ``ollama`` CLI
  and model-info calls send ``HEAD /`` without one on their own);
* a valid key is never refused because of other requests' failures from its address (an office
  behind one NAT keeps working while a script there sends wrong keys);
* a success does not reset the count (a valid key interleaved with guesses does not buy more).

While an address is locked, its wrong keys get 429 with ``Retry-After``. Locking is logged once
per lock (address, count, window; never a key) and reported to ``on_lock``. Memory is bounded:
the table never holds more than ``max_addresses`` entries.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import AuthThrottled

log = logging.getLogger("gateway.auth")


class Lockout:
    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        on_lock: Callable[[], None] | None = None,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._clock = clock
        self._on_lock = on_lock
        # address -> (failures in the current window, window start, locked until)
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def refusal(self, address: str) -> AuthThrottled | None:
        """The 429 for a wrong key from ``address`` while it is locked, else None."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        remaining = entry[2] - self._clock()
        if remaining <= 0:
            return None
        return AuthThrottled(
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
            log.warning(
                "locked out %s for %gs: %d failed authentications within %gs",
                address,
                self._window,
                count,
                self._window,
            )
            if self._on_lock is not None:
                self._on_lock()
            locked, count, start = now + self._window, 0, now
        self._entries[address] = (count, start, locked)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
