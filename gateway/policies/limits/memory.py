"""Per-key limits in this process: exact for a single gateway process.

Requests and tokens per minute are token buckets (capacity = the per-minute limit, refilled
continuously), so a burst of the whole minute's allowance is admitted at once and never more.
Tokens per day count against the UTC day. Everything happens without an ``await`` between check
and charge, so concurrent requests on the event loop cannot both take the last unit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import RateLimited
from gateway.policies.limits import Grant, Quota, Window, refusal

SECONDS_PER_MINUTE = 60.0
SECONDS_PER_DAY = 86400.0


@dataclass(slots=True)
class _Bucket:
    level: float
    updated: float

    def refill(self, capacity: int, now: float) -> None:
        rate = capacity / SECONDS_PER_MINUTE
        self.level = min(float(capacity), self.level + (now - self.updated) * rate)
        self.updated = now

    def window(self, capacity: int) -> Window:
        rate = capacity / SECONDS_PER_MINUTE
        return Window(capacity, int(self.level), max(capacity - self.level, 0.0) / rate if rate else 0.0)


@dataclass(slots=True)
class _KeyState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    day: int = -1
    day_used: int = 0
    in_flight: int = 0
    leases: set[str] = field(default_factory=set)


def _windows(state: _KeyState, quota: Quota) -> tuple[Window | None, Window | None]:
    requests = state.requests.window(quota.rpm) if state.requests and quota.rpm is not None else None
    tokens = state.tokens.window(quota.tpm) if state.tokens and quota.tpm is not None else None
    return requests, tokens


def _refused(state: _KeyState, quota: Quota, message: str, wait: float, *, can_wait: bool = True) -> RateLimited:
    # The windows as they stand (nothing was charged), for the 429's headers.
    return refusal(message, wait, *_windows(state, quota), can_wait=can_wait)


def utc_day(timestamp: float) -> int:
    """Days since the epoch, UTC (what Redis's script computes too)."""
    return int(timestamp // SECONDS_PER_DAY)


def seconds_to_midnight(timestamp: float) -> float:
    return SECONDS_PER_DAY - timestamp % SECONDS_PER_DAY


class MemoryLimiter:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count()

    def _state(self, key: str, quota: Quota, now: float) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if quota.rpm is not None:
            if state.requests is None:
                state.requests = _Bucket(float(quota.rpm), now)
            state.requests.refill(quota.rpm, now)
        if quota.tpm is not None:
            if state.tokens is None:
                state.tokens = _Bucket(float(quota.tpm), now)
            state.tokens.refill(quota.tpm, now)
        return state

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def status(self) -> str:
        return "ok"

    async def acquire(self, key: str, quota: Quota, tokens: int) -> Grant:
        return self.acquire_now(key, quota, tokens)

    def acquire_now(self, key: str, quota: Quota, tokens: int) -> Grant:
        now, wall = self._clock(), self._wall()
        state = self._state(key, quota, now)
        minute = tokens if quota.tpm is None else min(tokens, quota.tpm)
        if quota.concurrency is not None and state.in_flight >= quota.concurrency:
            raise _refused(state, quota, f"too many concurrent requests for this key (limit {quota.concurrency})", 1.0)
        if state.requests is not None and quota.rpm is not None and state.requests.level < 1:
            wait = (1 - state.requests.level) * SECONDS_PER_MINUTE / max(quota.rpm, 1)
            raise _refused(state, quota, f"rate limit reached: {quota.rpm} requests per minute", wait)
        if state.tokens is not None and quota.tpm is not None and state.tokens.level < minute:
            wait = (minute - state.tokens.level) * SECONDS_PER_MINUTE / max(quota.tpm, 1)
            raise _refused(state, quota, f"rate limit reached: {quota.tpm} tokens per minute", wait)
        day = utc_day(wall)
        if state.day != day:
            state.day, state.day_used = day, 0
        daily = tokens if quota.tpd is None else min(tokens, quota.tpd)
        if quota.tpd is not None and state.day_used + daily > quota.tpd:
            raise _refused(
                state,
                quota,
                f"daily token budget spent ({quota.tpd} tokens per day)",
                seconds_to_midnight(wall),
                can_wait=False,
            )
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= minute
        requests, token_window = _windows(state, quota)
        state.day_used += daily
        state.in_flight += 1
        lease = f"{key}:{next(self._ids)}"
        state.leases.add(lease)
        return Grant(lease, minute if quota.tpm is not None else 0, daily, day, requests, token_window)

    def settle(self, key: str, quota: Quota, grant: Grant, used: int) -> None:
        state = self._keys.get(key)
        if state is None or grant.lease not in state.leases:
            return
        state.leases.discard(grant.lease)
        state.in_flight -= 1
        now = self._clock()
        if state.tokens is not None and quota.tpm is not None:
            state.tokens.refill(quota.tpm, now)
            # Refund what was reserved but not used, or charge what went over (may go negative).
            state.tokens.level = min(float(quota.tpm), state.tokens.level + grant.reserved_minute - used)
        if state.day == grant.day:
            state.day_used = max(state.day_used + used - grant.reserved_day, 0)
