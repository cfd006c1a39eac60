"""Per-key limits: requests and tokens per minute, tokens per day, concurrent requests.

A ``Limiter`` admits a request atomically (every limit is checked, and all are charged or none)
and reserves an estimate of its tokens; ``settle`` trues the reservation up to the real count when
the request is over and frees its concurrency slot. A grant holds nothing after its settlement,
even one made while a backend's store was away. Backends: in-process (exact for one process) and
Redis (shared by every gateway process, see ``redis.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import RateLimited
from gateway.keys.store import QUOTA_NAMES


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits that apply to one key; None = unlimited.

    One field per quota of ``gateway.keys.store.Limits`` (``QUOTA_NAMES``), with the same name:
    what the limiters below enforce.
    """

    rpm: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    concurrency: int | None = None

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, name) is None for name in QUOTA_NAMES)


@dataclass(frozen=True, slots=True)
class Window:
    """One limit as the client sees it: OpenAI's x-ratelimit-{limit,remaining,reset}-*."""

    limit: int
    remaining: int
    reset: float  # seconds until the window is full again


@dataclass(frozen=True, slots=True)
class Grant:
    lease: str
    reserved_minute: int  # tokens taken from the per-minute budget
    reserved_day: int  # tokens taken from the per-day budget
    day: int  # the UTC day (days since the epoch) the day budget was charged to
    requests: Window | None
    tokens: Window | None


class Limiter(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> str:
        """ "ok", or what is degraded (shown by /readyz)."""

    async def acquire(self, key: str, quota: Quota, tokens: int) -> Grant:
        """Admit one request reserving ``tokens``, or raise ``RateLimited``."""

    def settle(self, key: str, quota: Quota, grant: Grant, used: int) -> None:
        """The request is over and used ``used`` tokens: true up and free its slot (never blocks)."""


def open_limiter(redis_url: str | None, *, fail_closed: bool) -> Limiter:
    """In-process limits, or limits shared through Redis (imported only when configured)."""
    from gateway.policies.limits.memory import MemoryLimiter

    if redis_url is None:
        return MemoryLimiter()
    from gateway.policies.limits.redis import RedisLimiter

    return RedisLimiter(redis_url, fallback=MemoryLimiter(), fail_closed=fail_closed)


def duration(seconds: float) -> str:
    """Go/OpenAI-style durations for the reset headers: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def window_headers(requests: Window | None, tokens: Window | None) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for name, window in ((b"requests", requests), (b"tokens", tokens)):
        if window is not None:
            headers += [
                (b"x-ratelimit-limit-" + name, str(window.limit).encode()),
                (b"x-ratelimit-remaining-" + name, str(max(window.remaining, 0)).encode()),
                (b"x-ratelimit-reset-" + name, duration(window.reset).encode()),
            ]
    return headers


def refusal(
    message: str, retry_after: float, requests: Window | None, tokens: Window | None, *, can_wait: bool = True
) -> RateLimited:
    """A 429 that tells clients when to retry (openai-python honours retry-after-ms up to 120 s)."""
    headers = {
        "Retry-After": str(max(math.ceil(retry_after), 1)),
        "retry-after-ms": f"{max(retry_after, 0.001) * 1000:.0f}",
        # Waiting cannot help (a day budget spent, a request larger than the limit): say so.
        "x-should-retry": "true" if can_wait else "false",
    }
    headers.update({name.decode(): value.decode() for name, value in window_headers(requests, tokens)})
    return RateLimited(message, headers=headers)
