"""Live traffic for the admin page: requests in flight per key, and the last refusals.

``LiveTraffic`` plugs into the forwarded routes as the last policy (it counts, per key, what has
passed every check and is being forwarded) and as a sink (it keeps the last requests the gateway
refused itself). It only counts and copies: it never refuses or delays anything.

Refusals without a valid key (401, 429 lockouts) are kept apart from those of known keys, each in
its own short list: a flood of bad keys cannot push out the refusals an operator looks for.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from gateway.flow import Flow
from gateway.observe.record import RequestRecord
from gateway.proxy.inbound import Inbound

RECENT_REFUSALS = 50


class LiveTraffic:
    def __init__(self, *, keep: int = RECENT_REFUSALS) -> None:
        self._running: Counter[str] = Counter()
        self._names: dict[str, str] = {}
        self._anonymous: deque[dict[str, Any]] = deque(maxlen=keep)
        self._known: deque[dict[str, Any]] = deque(maxlen=keep)

    async def admit(self, flow: Flow, inbound: Inbound) -> str:
        principal = flow.caller()
        self._running[principal.key_id] += 1
        self._names[principal.key_id] = principal.name
        return principal.key_id

    def finish(self, flow: Flow, key_id: str) -> None:
        self._running[key_id] -= 1
        if self._running[key_id] <= 0:
            del self._running[key_id]
            del self._names[key_id]

    def __call__(self, record: RequestRecord) -> None:
        # A refusal is an answer the gateway gave itself; a client that left refused nothing.
        if record.forwarded or record.status < 400 or record.outcome == "client_disconnect":
            return
        (self._known if record.key_id else self._anonymous).append(
            {
                "time": record.time,
                "key_id": record.key_id,
                "key_name": record.key_name,
                "client": record.client,
                "method": record.method,
                "path": record.path,
                "status": record.status,
                "outcome": record.outcome,
            }
        )

    def keys(self) -> list[dict[str, Any]]:
        """Keys with requests in flight, by name."""
        return [
            {"key_id": key_id, "key_name": self._names[key_id], "in_flight": count}
            for key_id, count in sorted(self._running.items(), key=lambda item: self._names[item[0]])
        ]

    def refusals(self) -> list[dict[str, Any]]:
        """Both lists, newest first."""
        return sorted([*self._anonymous, *self._known], key=lambda item: item["time"], reverse=True)
