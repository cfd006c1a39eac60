"""``/admin/api/live``: what is happening now (in flight and queued per key, the queue, the
upstreams, the last refusals), polled by the page every few seconds.

"In flight" means one thing here, in ``/readyz`` and in the metrics: past every check and the
server's fair queue, being answered now. Requests waiting in a queue are "queued", never counted
as in flight.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Depends

from gateway.admin.traffic import LiveTraffic
from gateway.keys.principal import Principal

UpstreamStates = Sequence[Mapping[str, object]]
# The upstream servers' state and the queue's, from whoever owns them (sync or async).
Upstreams = Callable[[], UpstreamStates | Awaitable[UpstreamStates]]
QueueState = Callable[[], Mapping[str, object]]


def live_router(
    traffic: LiveTraffic,
    *,
    queue: QueueState,
    upstreams: Upstreams,
    admin: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    router = APIRouter(tags=["live"], dependencies=[Depends(admin)])

    @router.get("/live", summary="Requests in flight and queued per key, the queue, the upstreams, recent refusals")
    async def live() -> dict[str, Any]:
        states = upstreams()
        if inspect.isawaitable(states):
            states = await states
        return {
            "time": time.time(),
            "in_flight": traffic.in_flight,
            "keys": traffic.keys(),
            "queue": dict(queue()),
            "upstreams": [dict(state) for state in states],
            "refusals": traffic.refusals(),
        }

    return router


def queue_totals(states: UpstreamStates) -> dict[str, object]:
    """The queues of every upstream as one: requests waiting, the longest wait, and capacity."""
    waits = [float(str(state.get("oldest_wait_s") or 0)) for state in states]
    capacities = [state.get("capacity") for state in states]
    return {
        "waiting": sum(int(str(state.get("queued") or 0)) for state in states),
        "oldest_wait_s": max(waits, default=0.0),
        "capacity": None if any(value is None for value in capacities) else sum(int(str(v)) for v in capacities),
    }


def asked_now(states: Callable[[], UpstreamStates], check: Callable[[], Awaitable[str]]) -> Upstreams:
    """The states of an upstream nothing watches in the background (a single one): its state is
    its readiness check (as ``/readyz`` asks it), asked now."""

    async def current() -> UpstreamStates:
        found = [dict(state) for state in states()]
        result = await check()
        for state in found:
            state["state"] = "up" if result == "ok" else "down"
            state["reason"] = None if result == "ok" else result
        return found

    return current
