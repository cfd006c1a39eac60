"""Live traffic for the admin page: requests in flight and queued per key, and the last refusals.

``LiveTraffic`` plugs into the forwarded routes as two policies around the routing policy and as a
sink. ``arrivals``, just before routing, counts per key what has passed the key's own checks;
``LiveTraffic`` itself, last, counts what has passed routing too (its server's fair queue): that is
"in flight" everywhere (this page, ``/readyz``, the metrics), the difference is "queued". As a sink
it keeps the last requests the gateway refused itself. It only counts and copies: it never refuses
or delays anything.

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


class Arrivals:
    """The policy before routing: counts, per key, requests queued or running."""

    def __init__(self, traffic: LiveTraffic) -> None:
        self._traffic = traffic

    async def admit(self, flow: Flow, inbound: Inbound) -> str:
        principal = flow.caller()
        traffic = self._traffic
        traffic.arrived[principal.key_id] += 1
        traffic.names[principal.key_id] = principal.name
        return principal.key_id

    def finish(self, flow: Flow, key_id: str) -> None:
        traffic = self._traffic
        traffic.arrived[key_id] -= 1
        if traffic.arrived[key_id] <= 0:
            del traffic.arrived[key_id]
            del traffic.names[key_id]


class LiveTraffic:
    def __init__(self, *, keep: int = RECENT_REFUSALS) -> None:
        # Per key id: requests past the key's checks (queued or running), and those running.
        self.arrived: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self.names: dict[str, str] = {}
        self.in_flight = 0
        self.arrivals = Arrivals(self)
        self._anonymous: deque[dict[str, Any]] = deque(maxlen=keep)
        self._known: deque[dict[str, Any]] = deque(maxlen=keep)

    async def admit(self, flow: Flow, inbound: Inbound) -> str:
        key_id = flow.caller().key_id
        self._running[key_id] += 1
        self.in_flight += 1
        return key_id

    def finish(self, flow: Flow, key_id: str) -> None:
        self.in_flight -= 1
        self._running[key_id] -= 1
        if self._running[key_id] <= 0:
            del self._running[key_id]

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
        """Keys with requests in flight or queued, by name."""
        return [
            {
                "key_id": key_id,
                "key_name": self.names[key_id],
                "in_flight": self._running[key_id],
                "queued": count - self._running[key_id],
            }
            for key_id, count in sorted(self.arrived.items(), key=lambda item: self.names[item[0]])
        ]

    def refusals(self) -> list[dict[str, Any]]:
        """Both lists, newest first."""
        return sorted([*self._anonymous, *self._known], key=lambda item: item["time"], reverse=True)
