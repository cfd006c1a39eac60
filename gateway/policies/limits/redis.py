"""Per-key limits shared by every gateway process through Redis.

The semantics are those of ``MemoryLimiter`` (token buckets for requests and tokens per minute,
a UTC-day token count, a concurrency count), but the state lives in Redis and each decision is one
Lua script: check every limit and charge all or none, atomically, with Redis's own clock (``TIME``)
so that gateways on different hosts agree (the scripts and the keys they keep: ``scripts.py``).
Each grant's reservation is recorded with it, so that its settlement refunds exactly that, once.

Leases: a lease id names the gateway process that holds it. A gateway that dies mid-request cannot
free its slots, so every lease expires ``lease_ttl`` seconds (default 60) after it was last renewed
(its reservation stays charged); a background task renews the leases of requests still running
every ``lease_ttl / 3``, so streams may last as long as they like. Keys expire once their buckets
are full again and their day count is over, so idle keys vanish.

When Redis cannot be reached (short socket timeouts), the limiter switches to its ``fallback``
(in-process limits, exact per process only) and logs it once; ``status()`` says so for /readyz.
With ``fail_closed`` it refuses requests (503) while Redis is away instead.

Coming back exact: a script can outlive its caller. A stalled Redis (SIGSTOP, a frozen host) runs
the commands waiting in its sockets when it resumes, long after their callers timed out and went
local; a reply can be lost after its script ran. So ACQUIRE and RENEW carry the moment their caller
stops waiting, in Redis's clock (this process keeps the offset of ``TIME`` to its own, measured low),
and do nothing once Redis's clock is past it; ACQUIRE and SETTLE are idempotent per lease. What
could not be settled, and every admission whose answer never came, is owed; a background task
looks for Redis every ``retry_interval`` and switches back only after settling all it owes (an
unanswered admission as unused), so no lease or reservation outlives the request that took it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.policies.limits import Grant, Limiter, Quota, Window, refusal
from gateway.policies.limits.scripts import ACQUIRE, EXPIRED, RENEW, SETTLE, key_names

log = logging.getLogger("gateway.limits")

LEASE_TTL = 60.0
RETRY_INTERVAL = 1.0
SOCKET_TIMEOUT = 0.5
MAX_CONNECTIONS = 64
DEGRADED = "degraded: redis unreachable, serving on local limits"
UNAVAILABLE = "unavailable"
# What "Redis is away" looks like; anything else is a bug and propagates.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(slots=True)
class _Debt:
    """One key's settlements that Redis has not confirmed: lease -> tokens used."""

    tpm: int | None
    leases: dict[str, int] = field(default_factory=dict)


def _arg(value: int | None) -> str:
    return "" if value is None else str(value)


def _window(capacity: int, level: float) -> Window:
    rate = capacity / 60.0
    return Window(capacity, int(level), max(capacity - level, 0.0) / rate if rate else 0.0)


def _windows(quota: Quota, reply: Sequence[Any]) -> tuple[Window | None, Window | None]:
    requests = _window(quota.rpm, float(reply[2])) if quota.rpm is not None and reply[2] != "" else None
    tokens = _window(quota.tpm, float(reply[3])) if quota.tpm is not None and reply[3] != "" else None
    return requests, tokens


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        fallback: Limiter,
        fail_closed: bool = False,
        lease_ttl: float = LEASE_TTL,
        retry_interval: float = RETRY_INTERVAL,
        socket_timeout: float = SOCKET_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._url = url
        self._fallback = fallback
        self._fail_closed = fail_closed
        self._lease_ttl = lease_ttl
        self._retry_interval = retry_interval
        self._socket_timeout = socket_timeout
        self._max_connections = max_connections
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._reachable = True
        self._owner = uuid.uuid4().hex[:16]  # names this process in its lease ids
        self._serial = itertools.count()
        # Redis's TIME minus time.monotonic(), measured after an answer arrived: never more than
        # the truth, so the deadlines sent to Redis are never later than the moment they stand for.
        self._clock_offset = 0.0
        self._last_sync = 0.0
        self._last_renewal = 0.0
        self._held: dict[str, set[str]] = {}  # key -> leases of requests running here
        self._owed: dict[str, _Debt] = {}  # key -> settlements to make before sharing again
        self._local: set[str] = set()  # leases the fallback granted
        self._tasks: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._closing = False
        # A bounded pool that makes a burst wait its turn (a few milliseconds) rather than fail;
        # a wait as long as several socket timeouts means Redis is stuck, and counts as an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=4 * self._socket_timeout,
            decode_responses=True,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            # One immediate retry replaces a pooled connection that died with a Redis restart.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._scripts = {source: self._redis.register_script(source) for source in (ACQUIRE, SETTLE, RENEW)}
        try:
            await self._sync_clock()
        except _UNREACHABLE as error:
            self._lost(error)
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        self._closing = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        await self.flush()
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except _UNREACHABLE as error:
                # Shutting down either way; a connection that cannot say goodbye is dropped.
                log.info("redis connections closed uncleanly: %s", str(error) or type(error).__name__)

    async def flush(self) -> None:
        """Wait for the settlements on their way to Redis (bounded by the socket timeouts)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=4 * self._socket_timeout + 1)

    def status(self) -> str:
        if self._reachable:
            return "ok"
        return UNAVAILABLE if self._fail_closed else DEGRADED

    async def acquire(self, key: str, quota: Quota, tokens: int) -> Grant:
        if self._reachable:
            lease = f"{self._owner}:{next(self._serial)}"
            call = asyncio.get_running_loop().create_task(self._admit(key, quota, tokens, lease))
            try:
                # Shielded: a request abandoned while the script runs must still give its lease back.
                reply = await asyncio.shield(call)
            except asyncio.CancelledError:
                call.add_done_callback(lambda done: self._abandoned(done, key, quota, tokens, lease))
                raise
            except _UNREACHABLE as error:
                # Unanswered is not refused: it may have been granted just before the silence.
                self._owe(key, quota, lease, 0)
                self._lost(error)
            else:
                return self._decide(key, quota, tokens, lease, reply)
        if self._fail_closed:
            raise LimiterUnavailable(
                "rate limits cannot be checked: the shared limit store (Redis) is unreachable",
                headers={"Retry-After": str(max(math.ceil(self._retry_interval), 1))},
            )
        grant = await self._fallback.acquire(key, quota, tokens)
        self._local.add(grant.lease)
        return grant

    def settle(self, key: str, quota: Quota, grant: Grant, used: int) -> None:
        if grant.lease in self._local:
            self._local.discard(grant.lease)
            self._fallback.settle(key, quota, grant, used)
            return
        held = self._held.get(key)
        if held is not None:
            held.discard(grant.lease)
            if not held:
                del self._held[key]
        if self._reachable:
            self._spawn(self._settle_remote(key, quota, grant.lease, used))
        else:
            self._owe(key, quota, grant.lease, used)

    async def _admit(self, key: str, quota: Quota, tokens: int, lease: str) -> Sequence[Any]:
        """ACQUIRE, answered before its deadline. An EXPIRED answer took nothing (the call waited
        for a pooled connection past its deadline): ask again, while a busy pool may still be waited for."""
        args = (_arg(quota.rpm), _arg(quota.tpm), _arg(quota.tpd), _arg(quota.concurrency), tokens, lease)
        patience = time.monotonic() + 4 * self._socket_timeout
        while True:
            reply: Sequence[Any] = await self._eval(ACQUIRE, key_names(key), (*args, self._lease_ttl, self._deadline()))
            self._set_clock(float(reply[5]))
            if int(reply[0]) != EXPIRED:
                return reply
            if time.monotonic() >= patience:
                raise RedisTimeoutError("redis ran every limits check after its caller's deadline")

    def _decide(self, key: str, quota: Quota, tokens: int, lease: str, reply: Sequence[Any]) -> Grant:
        code, wait = int(reply[0]), float(reply[1])
        requests, token_window = _windows(quota, reply)
        if code == 1:
            message = f"too many concurrent requests for this key (limit {quota.concurrency})"
            raise refusal(message, wait, requests, token_window)
        if code == 2:
            raise refusal(f"rate limit reached: {quota.rpm} requests per minute", wait, requests, token_window)
        if code == 3:
            raise refusal(f"rate limit reached: {quota.tpm} tokens per minute", wait, requests, token_window)
        if code == 4:
            message = f"daily token budget spent ({quota.tpd} tokens per day)"
            raise refusal(message, wait, requests, token_window, can_wait=False)
        self._held.setdefault(key, set()).add(lease)
        minute = 0 if quota.tpm is None else min(tokens, quota.tpm)
        daily = tokens if quota.tpd is None else min(tokens, quota.tpd)
        day = int(reply[4])
        return Grant(lease, minute, daily, day, requests, token_window)

    def _abandoned(self, call: asyncio.Future[Any], key: str, quota: Quota, tokens: int, lease: str) -> None:
        if call.cancelled():
            return
        error = call.exception()
        if error is not None:
            if isinstance(error, _UNREACHABLE):
                self._owe(key, quota, lease, 0)
                self._lost(error)
            return
        try:
            grant = self._decide(key, quota, tokens, lease, call.result())
        except RateLimited:
            return  # refused: nothing was charged
        self.settle(key, quota, grant, 0)

    async def _settle_remote(self, key: str, quota: Quota, lease: str, used: int) -> None:
        try:
            await self._eval(SETTLE, key_names(key), (_arg(quota.tpm), lease, used))
        except _UNREACHABLE as error:
            self._owe(key, quota, lease, used)
            self._lost(error)

    def _owe(self, key: str, quota: Quota, lease: str, used: int) -> None:
        """A settlement Redis has not confirmed; always followed by ``_lost``, so that it is made
        (or found to be made already) before limits are shared again."""
        debt = self._owed.setdefault(key, _Debt(quota.tpm))
        debt.tpm = quota.tpm
        debt.leases[lease] = used

    async def _repay(self) -> None:
        for key, debt in list(self._owed.items()):
            paid = dict(debt.leases)
            pairs: list[str | int] = [part for lease, used in paid.items() for part in (lease, used)]
            await self._eval(SETTLE, key_names(key), (_arg(debt.tpm), *pairs))
            for lease in paid:
                del debt.leases[lease]
            if not debt.leases:
                del self._owed[key]

    async def _eval(self, source: str, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        script = self._scripts.get(source)
        if script is None:
            raise RuntimeError("RedisLimiter used before start()")
        # EVALSHA, loading the script again when Redis has forgotten it (a restart, SCRIPT FLUSH).
        return await script(keys=list(keys), args=list(args))

    def _deadline(self) -> str:
        """In Redis's clock, when a call sent from now on is given up: redis-py stops reading its
        answer ``socket_timeout`` after sending it."""
        return f"{time.monotonic() + self._clock_offset + self._socket_timeout:.6f}"

    def _set_clock(self, redis_now: float) -> None:
        self._last_sync = time.monotonic()
        self._clock_offset = redis_now - self._last_sync

    async def _sync_clock(self) -> None:
        assert self._redis is not None
        seconds, micros = await self._redis.time()
        self._set_clock(seconds + micros / 1_000_000)

    def _lost(self, error: BaseException) -> None:
        if not self._reachable:
            return
        self._reachable = False
        then = "refusing requests (fail closed)" if self._fail_closed else "serving on local limits"
        log.warning("redis unreachable, %s until it is back: %s", then, str(error) or type(error).__name__)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling limits in redis failed", exc_info=task.exception())

    async def _maintain(self) -> None:
        """Find Redis again after an outage, renew running leases, keep the clock offset fresh
        (which also notices an outage when idle)."""
        renew_every = self._lease_ttl / 3
        # Not only the cancel: redis-py turns a cancel that meets its own socket timeout into a
        # TimeoutError, which looks like an outage here and would keep this loop alive.
        while not self._closing:
            await asyncio.sleep(min(self._retry_interval, renew_every))
            try:
                if not self._reachable:
                    await self._recover()
                elif self._held and time.monotonic() - self._last_renewal >= renew_every:
                    await self._renew()
                elif time.monotonic() - self._last_sync >= self._retry_interval:
                    await self._sync_clock()
            except _UNREACHABLE as error:
                if not self._closing:  # not a cancel that came out as a timeout
                    self._lost(error)

    async def _recover(self) -> None:
        """Share limits again only once Redis holds nothing for requests that ended meanwhile."""
        await self._sync_clock()
        await self._repay()
        if self._owed:
            return  # owed while this ran (a settlement that failed late): next time
        self._reachable = True
        log.info("redis reachable again: limits are shared again")

    async def _renew(self) -> None:
        self._last_renewal = time.monotonic()
        held = [(key, sorted(ids)) for key, ids in self._held.items()]
        deadline = self._deadline()
        answers = await asyncio.gather(
            *(self._eval(RENEW, key_names(key)[1:], (self._lease_ttl, deadline, *ids)) for key, ids in held)
        )
        if not all(int(answer) for answer in answers):
            self._last_renewal = 0.0  # run after its deadline (a queue for connections): again next tick
