"""Public keys that asked for access: signed requests whose Ollama key belongs to no gateway key
(``ollama signin`` against the gateway makes one). An admin sees them on the admin page, with what
the requests said about their client, and attaches a key to an existing or a new gateway key.

Bounded in number and age, oldest first out; nothing here is a secret (a public key, a user agent,
an address, times).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.keys.ollamakey import OllamaKey

# What a client may write into a user agent that is kept and shown.
_AGENT_LIMIT = 200


@dataclass(frozen=True, slots=True)
class AccessRequest:
    key: OllamaKey
    user_agent: str
    address: str
    first_seen: float
    last_seen: float
    count: int


class PendingAccess:
    def __init__(self, *, limit: int = 100, max_age: float = 24 * 3600, clock: Callable[[], float] = time.time) -> None:
        self._limit = limit
        self._max_age = max_age
        self._clock = clock
        self._requests: OrderedDict[bytes, AccessRequest] = OrderedDict()

    def note(self, key: OllamaKey, user_agent: str, address: str) -> None:
        now = self._clock()
        agent = "".join(char for char in user_agent[:_AGENT_LIMIT] if char.isprintable())
        earlier = self._requests.pop(key.blob, None)
        self._requests[key.blob] = AccessRequest(
            key=key,
            user_agent=agent,
            address=address,
            first_seen=earlier.first_seen if earlier else now,
            last_seen=now,
            count=(earlier.count if earlier else 0) + 1,
        )
        self._expire(now)
        while len(self._requests) > self._limit:
            self._requests.popitem(last=False)

    def get(self, key: OllamaKey) -> AccessRequest | None:
        self._expire(self._clock())
        return self._requests.get(key.blob)

    def list(self) -> list[AccessRequest]:
        """Newest first."""
        self._expire(self._clock())
        return list(reversed(self._requests.values()))

    def forget(self, key: OllamaKey) -> None:
        self._requests.pop(key.blob, None)

    def _expire(self, now: float) -> None:
        while self._requests:
            oldest = next(iter(self._requests.values()))
            if now - oldest.last_seen <= self._max_age:
                return
            self._requests.popitem(last=False)
