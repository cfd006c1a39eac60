"""Per-key limits shared by every gateway process through Redis.

The semantics are those of ``MemoryLimiter`` (token buckets for requests and tokens per minute,
a UTC-day token count, a concurrency count), but the state lives in Redis and each decision is one
Lua script: check every limit and charge all or none, atomically, with Redis's own clock (``TIME``)
so that gateways on different hosts agree. Per key there is one hash (buckets and the day count)
and one sorted set of concurrency leases scored by their expiry.

Leases: a gateway that dies mid-request cannot free its slots, so every lease expires
``lease_ttl`` seconds (default 60) after it was last renewed; a background task renews the leases
of requests still running every ``lease_ttl / 3``, so streams may last as long as they like.
Keys expire once their buckets are full again and their day count is over, so idle keys vanish.

When Redis cannot be reached (short socket timeouts), the limiter switches to its ``fallback``
(in-process limits, exact per process only) and logs it once; ``status()`` says so for /readyz.
A background task pings Redis every ``retry_interval`` and switches back by itself. With
``fail_closed`` it refuses requests (503) while Redis is away instead.

Every call to Redis goes through ``_reached``, which translates an outage into the gateway's
``LimiterUnavailable`` once; nothing else here sees a Redis exception.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.policies.limits import Grant, Limiter, Quota, Window, refusal

log = logging.getLogger("gateway.limits")

T = TypeVar("T")

LEASE_TTL = 60.0
RETRY_INTERVAL = 1.0
SOCKET_TIMEOUT = 0.5
MAX_CONNECTIONS = 64
DEGRADED = "degraded: redis unreachable, serving on local limits"
UNAVAILABLE = "unavailable"
# What "Redis is away" looks like; anything else is a bug and propagates.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(v) if v == '' then return nil end return tonumber(v) end
local function fmt(v) if v == nil then return '' end return string.format('%.17g', v) end
-- A missing bucket is a full one; refill continuously at capacity per minute.
local function refill(level, updated, cap)
  if not level then return cap end
  return math.min(cap, tonumber(level) + math.max(now - tonumber(updated), 0) * cap / 60)
end
-- Keep the hash while a bucket is below capacity or today's count matters.
local function keep(state, fields)
  local secs = 1
  if fields.rl then secs = math.max(secs, (fields.rpm - fields.rl) * 60 / math.max(fields.rpm, 1)) end
  if fields.tl then secs = math.max(secs, (fields.tpm - fields.tl) * 60 / math.max(fields.tpm, 1)) end
  if fields.used > 0 then secs = math.max(secs, 86400 - now % 86400) end
  secs = math.ceil(secs) + 1
  if redis.call('TTL', state) < secs then redis.call('EXPIRE', state, secs) end
end
"""

# KEYS: state hash, lease set. ARGV: rpm, tpm, tpd, concurrency ('' = none), tokens, lease, ttl.
# Reply: {code, wait, requests level, tokens level, day number}; code 0 = admitted and charged,
# 1..4 = refused by concurrency, requests/min, tokens/min, tokens/day (nothing charged).
ACQUIRE = (
    _COMMON
    + """
local rpm, tpm, tpd, conc = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), num(ARGV[4])
local tokens, ttl = tonumber(ARGV[5]), tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt', 'day', 'used')
local rl, tl
if rpm then rl = refill(s[1], s[2], rpm) end
if tpm then tl = refill(s[3], s[4], tpm) end
local minute, daily = tokens, tokens
if tpm then minute = math.min(tokens, tpm) end
if tpd then daily = math.min(tokens, tpd) end
local day = math.floor(now / 86400)
local used = 0
if s[5] and tonumber(s[5]) == day then used = tonumber(s[6]) end
local function reply(code, wait) return {code, fmt(wait), fmt(rl), fmt(tl), day} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if conc and redis.call('ZCARD', KEYS[2]) >= conc then return reply(1, 1) end
if rpm and rl < 1 then return reply(2, (1 - rl) * 60 / math.max(rpm, 1)) end
if tpm and tl < minute then return reply(3, (minute - tl) * 60 / math.max(tpm, 1)) end
if tpd and used + daily > tpd then return reply(4, 86400 - now % 86400) end
if rpm then
  rl = rl - 1
  redis.call('HSET', KEYS[1], 'rl', fmt(rl), 'rt', fmt(now))
end
if tpm then
  tl = tl - minute
  redis.call('HSET', KEYS[1], 'tl', fmt(tl), 'tt', fmt(now))
end
used = used + daily
redis.call('HSET', KEYS[1], 'day', day, 'used', used)
redis.call('ZADD', KEYS[2], fmt(now + ttl), ARGV[6])
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
keep(KEYS[1], {rpm = rpm, rl = rl, tpm = tpm, tl = tl, used = used})
return reply(0, 0)
"""
)

# KEYS: state hash, lease set. ARGV: lease, tpm ('' = none), reserved minute, used, day, reserved day.
# A lease that is gone (settled already, or expired) changes nothing, as in MemoryLimiter.
SETTLE = (
    _COMMON
    + """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local tpm, used = num(ARGV[2]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tl', 'tt', 'day', 'used')
local tl
if tpm then
  -- Refund what was reserved but not used, or charge what went over (may go negative).
  tl = math.min(tpm, refill(s[1], s[2], tpm) + tonumber(ARGV[3]) - used)
  redis.call('HSET', KEYS[1], 'tl', fmt(tl), 'tt', fmt(now))
end
local day_used = 0
if s[3] and tonumber(s[3]) == tonumber(ARGV[5]) then
  day_used = math.max(tonumber(s[4]) + used - tonumber(ARGV[6]), 0)
  redis.call('HSET', KEYS[1], 'used', day_used)
end
keep(KEYS[1], {tpm = tpm, tl = tl, used = day_used})
return 1
"""
)

# KEYS: lease set. ARGV: ttl, lease ids still running here. XX: a lease settled meanwhile stays gone.
RENEW = (
    _COMMON
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', fmt(now + ttl), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
return 0
"""
)


def _keys(key: str) -> tuple[str, str]:
    # One hash tag per key: both keys of a script live in the same cluster slot.
    return f"gateway:limits:{{{key}}}:state", f"gateway:limits:{{{key}}}:leases"


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
        self._last_contact = 0.0
        self._last_renewal = 0.0
        self._held: dict[str, set[str]] = {}  # lease set -> leases of requests running here
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
            await self._reached(self._redis.ping())
            self._contact()
        except LimiterUnavailable as error:
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
                await self._reached(self._redis.aclose())
            except LimiterUnavailable as error:
                # Shutting down either way; a connection that cannot say goodbye is dropped.
                log.info("redis connections closed uncleanly: %s", error)

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
            lease = uuid.uuid4().hex
            args = (_arg(quota.rpm), _arg(quota.tpm), _arg(quota.tpd), _arg(quota.concurrency), tokens)
            call = asyncio.get_running_loop().create_task(
                self._eval(ACQUIRE, _keys(key), (*args, lease, self._lease_ttl))
            )
            try:
                # Shielded: a request abandoned while the script runs must still give its lease back.
                reply = await asyncio.shield(call)
            except asyncio.CancelledError:
                call.add_done_callback(lambda done: self._abandoned(done, key, quota, tokens, lease))
                raise
            except LimiterUnavailable as error:
                self._lost(error)
            else:
                return self._decide(key, quota, tokens, lease, reply)
        if self._fail_closed:
            raise self._unavailable()
        grant = await self._fallback.acquire(key, quota, tokens)
        self._local.add(grant.lease)
        return grant

    def settle(self, key: str, quota: Quota, grant: Grant, used: int) -> None:
        if grant.lease in self._local:
            self._local.discard(grant.lease)
            self._fallback.settle(key, quota, grant, used)
            return
        leases = _keys(key)[1]
        held = self._held.get(leases)
        if held is not None:
            held.discard(grant.lease)
            if not held:
                del self._held[leases]
        args = (grant.lease, _arg(quota.tpm), grant.reserved_minute, used, grant.day, grant.reserved_day)
        self._spawn(self._settle_remote(key, args))

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
        self._held.setdefault(_keys(key)[1], set()).add(lease)
        minute = 0 if quota.tpm is None else min(tokens, quota.tpm)
        daily = tokens if quota.tpd is None else min(tokens, quota.tpd)
        day = int(reply[4])
        return Grant(lease, minute, daily, day, requests, token_window)

    def _abandoned(self, call: asyncio.Future[Any], key: str, quota: Quota, tokens: int, lease: str) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        try:
            grant = self._decide(key, quota, tokens, lease, call.result())
        except RateLimited:
            return  # refused: nothing was charged
        self.settle(key, quota, grant, 0)

    async def _settle_remote(self, key: str, args: tuple[str | int, ...]) -> None:
        try:
            await self._eval(SETTLE, _keys(key), args)
        except LimiterUnavailable as error:
            # The lease expires by itself; the reservation stays charged.
            self._lost(error)

    async def _eval(self, source: str, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        script = self._scripts.get(source)
        if script is None:
            raise RuntimeError("RedisLimiter used before start()")
        # EVALSHA, loading the script again when Redis has forgotten it (a restart, SCRIPT FLUSH).
        result = await self._reached(script(keys=list(keys), args=list(args)))
        self._contact()
        return result

    async def _reached(self, call: Awaitable[T]) -> T:
        """``call``'s answer from Redis; Redis away (refused, reset, timed out) is translated here,
        once, into ``LimiterUnavailable`` with Redis's own words as its reason."""
        try:
            return await call
        except _UNREACHABLE as error:
            raise self._unavailable(str(error) or type(error).__name__) from error

    def _unavailable(self, reason: str | None = None) -> LimiterUnavailable:
        return LimiterUnavailable(
            "rate limits cannot be checked: the shared limit store (Redis) is unreachable",
            headers={"Retry-After": str(max(math.ceil(self._retry_interval), 1))},
            reason=reason,
        )

    def _contact(self) -> None:
        self._last_contact = time.monotonic()

    def _lost(self, error: LimiterUnavailable) -> None:
        if not self._reachable:
            return
        self._reachable = False
        then = "refusing requests (fail closed)" if self._fail_closed else "serving on local limits"
        log.warning("redis unreachable, %s until it is back: %s", then, error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling limits in redis failed", exc_info=task.exception())

    async def _maintain(self) -> None:
        """Find Redis again after an outage, renew running leases, notice an outage when idle."""
        renew_every = self._lease_ttl / 3
        # Not only the cancel: redis-py turns a cancel that meets its own socket timeout into a
        # TimeoutError, which looks like an outage here and would keep this loop alive.
        while not self._closing:
            await asyncio.sleep(min(self._retry_interval, renew_every))
            assert self._redis is not None
            try:
                if not self._reachable:
                    await self._reached(self._redis.ping())
                    self._contact()
                    self._reachable = True
                    log.info("redis reachable again: limits are shared again")
                elif self._held and time.monotonic() - self._last_renewal >= renew_every:
                    await self._renew()
                elif time.monotonic() - self._last_contact >= self._retry_interval:
                    await self._reached(self._redis.ping())
                    self._contact()
            except LimiterUnavailable as error:
                if not self._closing:  # not a cancel that came out as a timeout
                    self._lost(error)

    async def _renew(self) -> None:
        self._last_renewal = time.monotonic()
        held = [(leases, sorted(ids)) for leases, ids in self._held.items()]
        await asyncio.gather(*(self._eval(RENEW, (leases,), (self._lease_ttl, *ids)) for leases, ids in held))
