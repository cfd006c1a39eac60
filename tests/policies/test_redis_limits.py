"""Limits shared through a real Redis server: the same answers as in-process limits, exact across
gateway processes, leases that outlive a dead gateway only briefly, and outages survived."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.keys.store import Limits
from gateway.policies.limits import Grant, Limiter, Quota
from gateway.policies.limits.memory import MemoryLimiter, seconds_to_midnight, utc_day
from gateway.policies.limits.redis import DEGRADED, RedisLimiter
from gateway.policies.limits.scripts import ACQUIRE, SETTLE
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.redis_server import RedisServer
from tests.servers import ROOT, GatewayProcess, gateway_process

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
WAIT = 10.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of this test's own, to kill and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def open_redis_limiters() -> AsyncIterator[Callable[..., RedisLimiter]]:
    limiters: list[RedisLimiter] = []

    def open_one(url: str, **options: object) -> RedisLimiter:
        options.setdefault("fallback", MemoryLimiter())
        limiter = RedisLimiter(url, **options)  # type: ignore[arg-type]
        limiters.append(limiter)
        return limiter

    yield open_one
    for limiter in limiters:
        await limiter.close()


async def _settled(limiter: Limiter) -> None:
    """The Redis settlement runs as a task; wait for it before the next step."""
    if isinstance(limiter, RedisLimiter):
        await limiter.flush()


async def _refused(limiter: Limiter, key: str, quota: Quota, tokens: int) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(key, quota, tokens)
    return caught.value


async def _poll(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- the limiter against a real server ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_backends_answer_a_sequence_alike(
    backend: str, redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    limiter: Limiter = MemoryLimiter() if backend == "memory" else open_redis_limiters(redis_url)
    await limiter.start()
    # 1 token and 0.05 requests refill per second: the sequence runs well within one token.
    quota = Quota(rpm=3, tpm=60, tpd=100, concurrency=2)

    first = await limiter.acquire("k", quota, 10)
    assert (first.reserved_minute, first.reserved_day, first.day) == (10, 10, utc_day(time.time()))
    assert first.requests is not None
    assert first.tokens is not None
    assert (first.requests.limit, first.requests.remaining) == (3, 2)
    assert first.requests.reset == pytest.approx(20, abs=0.2)
    assert (first.tokens.limit, first.tokens.remaining) == (60, 50)
    assert first.tokens.reset == pytest.approx(10, abs=0.2)
    second = await limiter.acquire("k", quota, 10)
    assert second.requests is not None
    assert second.tokens is not None
    assert (second.requests.remaining, second.tokens.remaining) == (1, 40)

    busy = await _refused(limiter, "k", quota, 10)
    assert busy.message == "too many concurrent requests for this key (limit 2)"
    assert {name: busy.headers[name] for name in ("Retry-After", "retry-after-ms", "x-should-retry")} == {
        "Retry-After": "1",
        "retry-after-ms": "1000",
        "x-should-retry": "true",
    }
    assert busy.headers["x-ratelimit-remaining-requests"] == "1"
    assert busy.headers["x-ratelimit-remaining-tokens"] == "40"

    limiter.settle("k", quota, first, 3)  # 7 of 10 reserved tokens come back
    await _settled(limiter)
    over = await _refused(limiter, "k", quota, 70)  # capped at 60 a minute; 47 left
    assert over.message == "rate limit reached: 60 tokens per minute"
    assert over.headers["Retry-After"] == "13"
    assert int(over.headers["retry-after-ms"]) == pytest.approx(13_000, abs=300)
    assert over.headers["x-ratelimit-remaining-tokens"] == "47"

    third = await limiter.acquire("k", quota, 40)
    assert third.requests is not None
    assert third.tokens is not None
    assert (third.requests.remaining, third.tokens.remaining) == (0, 7)
    limiter.settle("k", quota, second, 0)
    await _settled(limiter)
    spent = await _refused(limiter, "k", quota, 1)
    assert spent.message == "rate limit reached: 3 requests per minute"
    assert spent.headers["Retry-After"] == "20"
    assert spent.headers["x-ratelimit-remaining-tokens"] == "17"
    assert spent.headers["x-should-retry"] == "true"

    # The day budget alone: no windows, and waiting does not help before midnight.
    daily = Quota(tpd=100)
    morning = await limiter.acquire("d", daily, 60)
    assert (morning.requests, morning.tokens) == (None, None)
    gone = await _refused(limiter, "d", daily, 60)
    assert gone.message == "daily token budget spent (100 tokens per day)"
    assert gone.headers["x-should-retry"] == "false"
    assert int(gone.headers["Retry-After"]) == pytest.approx(seconds_to_midnight(time.time()), abs=2)
    limiter.settle("d", daily, morning, 20)
    limiter.settle("d", daily, morning, 20)  # a second settlement of one grant changes nothing
    await _settled(limiter)
    await limiter.acquire("d", daily, 80)
    assert (await _refused(limiter, "d", daily, 1)).message == gone.message
    await limiter.close()


async def test_a_burst_larger_than_the_pool_is_exact(
    redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    # Socket timeouts wide enough that a slow, shared machine is never mistaken for an outage
    # (the queue for a pooled connection may wait up to four of them).
    first = open_redis_limiters(redis_url, max_connections=4, socket_timeout=2.0)
    second = open_redis_limiters(redis_url, max_connections=4, socket_timeout=2.0)
    await first.start()
    await second.start()
    quota = Quota(rpm=50)

    async def admitted(limiter: RedisLimiter) -> bool:
        try:
            await limiter.acquire("burst", quota, 0)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(admitted((first, second)[index % 2]) for index in range(200)))
    assert results.count(True) == 50
    # Waiting for a pooled connection is not an outage.
    assert (first.status(), second.status()) == ("ok", "ok")


async def test_keys_expire_once_idle(redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]) -> None:
    limiter = open_redis_limiters(redis_url, lease_ttl=30.0)
    await limiter.start()
    quota = Quota(rpm=60, concurrency=5)
    grant = await limiter.acquire("idle", quota, 0)
    client = redis.Redis.from_url(redis_url)
    try:
        state, leases = "gateway:limits:{idle}:state", "gateway:limits:{idle}:leases"
        assert 0 < client.pttl(leases) <= 30_000
        # One request of 60 a minute refills in one second.
        assert 1 <= client.ttl(state) <= 2
        # The grant's record (what its settlement refunds) lives as long as an outage may.
        grants = "gateway:limits:{idle}:grants"
        assert client.pttl(grants) == pytest.approx((seconds_to_midnight(time.time()) + 30) * 1000, abs=3000)
        limiter.settle("idle", quota, grant, 0)
        await limiter.flush()
        assert client.zcard(leases) == 0
        assert client.exists(grants) == 0
        await limiter.acquire("idle-day", Quota(tpd=1000), 10)
        # A day count is kept until the UTC day is over.
        assert client.ttl("gateway:limits:{idle-day}:state") == pytest.approx(seconds_to_midnight(time.time()), abs=3)
    finally:
        client.close()


async def test_a_dead_gateway_frees_its_slots_after_the_lease_ttl(
    redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    alive = open_redis_limiters(redis_url, lease_ttl=0.3, retry_interval=0.05)
    other = open_redis_limiters(redis_url, lease_ttl=0.3, retry_interval=0.05)
    await alive.start()
    await other.start()
    quota = Quota(concurrency=1)
    await alive.acquire("slot", quota, 0)
    # Renewed while its gateway lives, however long the request runs.
    await asyncio.sleep(1.0)
    assert (await _refused(other, "slot", quota, 0)).message.startswith("too many concurrent requests")
    await alive.close()  # dies without settling
    started = time.monotonic()
    while True:
        try:
            grant = await other.acquire("slot", quota, 0)
            break
        except RateLimited:
            assert time.monotonic() - started < 3.0, "the lease never expired"
            await asyncio.sleep(0.02)
    other.settle("slot", quota, grant, 0)


async def test_an_acquire_abandoned_midway_gives_its_slot_back(
    redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    limiter = open_redis_limiters(redis_url)
    await limiter.start()
    quota = Quota(concurrency=1)
    abandoned = asyncio.get_running_loop().create_task(limiter.acquire("gone", quota, 0))
    await asyncio.sleep(0)  # the script is on its way to Redis
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    deadline = time.monotonic() + WAIT
    while True:
        await limiter.flush()
        try:
            grant = await limiter.acquire("gone", quota, 0)
            break
        except RateLimited:
            assert time.monotonic() < deadline, "the abandoned lease was never given back"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.zrange("gateway:limits:{gone}:leases", 0, -1) == [grant.lease.encode()]
    finally:
        client.close()


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


async def test_scripts_are_loaded_again_when_redis_forgot_them(
    redis_url: str, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    limiter = open_redis_limiters(redis_url)
    await limiter.start()
    quota = Quota(rpm=10)
    limiter.settle("s", quota, await limiter.acquire("s", quota, 0), 0)
    await limiter.flush()
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()  # what a restarted Redis has
        grant = await limiter.acquire("s", quota, 0)
        assert grant.requests is not None
        assert grant.requests.remaining == 8
        limiter.settle("s", quota, grant, 0)
        await limiter.flush()
        assert client.script_exists(_sha(ACQUIRE), _sha(SETTLE)) == [True, True]
    finally:
        client.close()
    assert limiter.status() == "ok"


async def test_an_outage_is_served_locally_and_recovered_from(
    own_redis: RedisServer, open_redis_limiters: Callable[..., RedisLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    fallback = MemoryLimiter()
    limiter = open_redis_limiters(own_redis.url, fallback=fallback, retry_interval=0.05)
    await limiter.start()
    quota = Quota(concurrency=1)
    before = await limiter.acquire("o", quota, 0)
    caplog.set_level(logging.INFO, logger="gateway.limits")

    own_redis.kill()
    limiter.settle("o", quota, before, 0)  # fails quietly; the lease would expire by itself
    local = await limiter.acquire("o", quota, 0)
    assert limiter.status() == DEGRADED
    for _ in range(3):
        assert (await _refused(limiter, "o", quota, 0)).message.startswith("too many concurrent requests")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "redis unreachable, serving on local limits" in warnings[0].getMessage()

    own_redis.start()
    await _poll(lambda: limiter.status() == "ok")
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    # A grant from the outage is settled where it was granted.
    with pytest.raises(RateLimited):
        fallback.acquire_now("o", quota, 0)
    limiter.settle("o", quota, local, 0)
    fallback.settle("o", quota, fallback.acquire_now("o", quota, 0), 0)
    shared: Grant = await limiter.acquire("o", quota, 0)
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert client.zrange("gateway:limits:{o}:leases", 0, -1) == [shared.lease.encode()]
    finally:
        client.close()


async def test_fail_closed_refuses_while_redis_is_away(
    own_redis: RedisServer, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    limiter = open_redis_limiters(own_redis.url, fail_closed=True, retry_interval=0.05)
    await limiter.start()
    await limiter.acquire("c", Quota(rpm=5), 0)
    own_redis.kill()
    with pytest.raises(LimiterUnavailable) as caught:
        await limiter.acquire("c", Quota(rpm=5), 0)
    assert caught.value.status == 503
    assert limiter.status() == "unavailable"
    own_redis.start()
    await _poll(lambda: limiter.status() == "ok")
    await limiter.acquire("c", Quota(rpm=5), 0)


async def test_close_ends_the_maintainer_even_when_its_cancel_becomes_a_timeout(
    own_redis: RedisServer, open_redis_limiters: Callable[..., RedisLimiter]
) -> None:
    # redis-py turns a cancel that meets its socket timeout into a TimeoutError; the maintainer
    # takes that for an outage, so close() must not rely on the cancel alone.
    limiter = open_redis_limiters(own_redis.url, retry_interval=0.05)
    own_redis.kill()
    await limiter.start()
    assert limiter.status() == DEGRADED
    asking = asyncio.Event()
    turned: list[bool] = []

    async def time_whose_cancel_times_out() -> tuple[int, int]:
        asking.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if turned:
                raise  # only the first cancel is lost, so the fixture's close() ends a failed run
            turned.append(True)
            raise RedisTimeoutError("Timeout reading from redis") from None
        return (0, 0)

    limiter._redis.time = time_whose_cancel_times_out  # type: ignore[union-attr,method-assign]
    await asyncio.wait_for(asking.wait(), WAIT)
    closing = asyncio.get_running_loop().create_task(limiter.close())
    done, _ = await asyncio.wait({closing}, timeout=WAIT)
    assert done, "close() never returned: the maintainer outlived its cancel"
    await closing


async def test_close_survives_connections_that_cannot_close_cleanly(
    redis_url: str, open_redis_limiters: Callable[..., RedisLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    limiter = open_redis_limiters(redis_url)
    await limiter.start()
    assert limiter._redis is not None
    really_close = limiter._redis.aclose

    async def close_that_times_out(close_connection_pool: bool | None = None) -> None:
        await really_close()
        raise RedisTimeoutError("Timed out closing connection after 0.5")

    limiter._redis.aclose = close_that_times_out  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="gateway.limits"):
        await limiter.close()
    assert "closed uncleanly: Timed out closing connection" in caplog.text


# --- gateway processes ----------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _env(fake: FakeOllama, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": redis_url,
        **extra,
    }


def _readyz(gateway: GatewayProcess) -> httpx.Response:
    return httpx.get(gateway.url + "/readyz", timeout=10)


def _wait_for_redis_check(gateway: GatewayProcess, expected: str) -> httpx.Response:
    deadline = time.monotonic() + WAIT
    while True:
        response = _readyz(gateway)
        if response.json()["checks"].get("redis") == expected:
            return response
        assert time.monotonic() < deadline, f"/readyz never said redis {expected!r}: {response.json()}"
        time.sleep(0.05)


async def _post_all(urls: list[str], key: str, count: int) -> list[tuple[float, int, bytes]]:
    """``count`` chat requests spread over ``urls``, all connected first, then written at once.

    Plain HTTP/1.1 over sockets: a pooled client spends longer juggling 200 connections than the
    gateways spend answering, and the burst must be shorter than one refill (1.2 s at rpm=50).
    Returns (seconds until the whole response was read, status, body) for each request.
    """
    body = json.dumps(CHAT).encode()
    request = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    ports = [int(url.rsplit(":", 1)[1]) for url in urls]
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", ports[index % len(ports)]) for index in range(count))
    )
    started = time.monotonic()
    for _, writer in connections:
        writer.write(request)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[float, int, bytes]:
        async with asyncio.timeout(30):
            data = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, content = data.partition(b"\r\n\r\n")
        return time.monotonic() - started, int(head.split(b" ", 2)[1]), content

    return await asyncio.gather(*(answer(reader, writer) for reader, writer in connections))


def test_two_gateways_admit_exactly_the_shared_rpm(fake: FakeOllama, database_url: str, redis_url: str) -> None:
    key = issue_key(database_url, "burst", limits=Limits(rpm=50))
    env = _env(fake, database_url, redis_url)
    with gateway_process(env) as first, gateway_process(env) as second:
        for gateway in (first, second):
            assert _readyz(gateway).json()["checks"]["redis"] == "ok"
        answers = asyncio.run(_post_all([first.url, second.url], key, 200))
        logs = first.stderr.lines + second.stderr.lines
    statuses = [status for _, status, _ in answers]
    admitted = statuses.count(200)
    # Each process alone would admit 50. The bucket refills one request every 1.2 s, so only a
    # burst slower than that (a starved machine) may fairly admit one more per 1.2 s.
    refilled = int(max(seconds for seconds, _, _ in answers) / 1.2)
    assert 50 <= admitted <= 50 + refilled, f"{admitted} admitted"
    assert statuses.count(429) == 200 - admitted
    refused = {body for _, status, body in answers if status == 429}
    assert refused == {b'{"error":"rate limit reached: 50 requests per minute"}'}
    assert not [line for line in logs if "redis" in line]


def test_gateways_survive_a_redis_outage_and_share_again(
    fake: FakeOllama, database_url: str, own_redis: RedisServer
) -> None:
    busy = issue_key(database_url, "busy", limits=Limits(rpm=1000))
    small = issue_key(database_url, "small", limits=Limits(rpm=2))
    outage = issue_key(database_url, "outage", limits=Limits(rpm=2))
    env = _env(fake, database_url, own_redis.url)
    with (
        gateway_process(env) as first,
        gateway_process(env) as second,
        httpx.Client(timeout=10, headers={"Authorization": f"Bearer {busy}"}) as client,
    ):
        for gateway in (first, second):
            gateway.stderr.wait_for("forwarding to")  # its start-up check has been answered
        fake.forget_requests()
        # A stream admitted through Redis is running when Redis dies.
        fake.behaviour = Behaviour(tokens=20, token_delay=0.03)
        stream_status: list[int] = []

        def stream() -> None:
            with client.stream("POST", first.url + "/api/chat", json={**CHAT, "stream": True}) as response:
                stream_status.append(response.status_code)
                stream_status.append(sum(1 for _ in response.iter_lines()))

        streamer = threading.Thread(target=stream)
        streamer.start()
        fake.wait_for_request()
        fake.behaviour = Behaviour()
        statuses = []
        for index in range(20):
            if index == 5:
                own_redis.kill()
            statuses.append(client.post((first, second)[index % 2].url + "/api/chat", json=CHAT).status_code)
        streamer.join(timeout=WAIT)
        assert statuses == [200] * 20
        assert stream_status == [200, 21]

        for gateway in (first, second):
            degraded = _wait_for_redis_check(gateway, DEGRADED)
            assert degraded.status_code == 200
        # While Redis is away each gateway still enforces the key's rpm, on its own.
        local = [client.post(first.url + "/api/chat", json=CHAT, headers=_bearer(outage)) for _ in range(3)]
        assert [response.status_code for response in local] == [200, 200, 429]
        assert local[2].json() == {"error": "rate limit reached: 2 requests per minute"}
        assert client.post(second.url + "/api/chat", json=CHAT, headers=_bearer(outage)).status_code == 200

        own_redis.start()
        for gateway in (first, second):
            assert _wait_for_redis_check(gateway, "ok").status_code == 200
        shared = [
            httpx.post(gateway.url + "/api/chat", json=CHAT, headers={"Authorization": f"Bearer {small}"}).status_code
            for gateway in (first, second, first, second)
        ]
        assert shared == [200, 200, 429, 429]
        logs = [first.stderr.lines, second.stderr.lines]
    for lines in logs:
        assert sum("redis unreachable, serving on local limits" in line for line in lines) == 1


def test_fail_closed_gateway_answers_503_in_each_dialect(
    fake: FakeOllama, database_url: str, own_redis: RedisServer
) -> None:
    key = issue_key(database_url, "strict", limits=Limits(rpm=100))
    env = _env(fake, database_url, own_redis.url, GATEWAY_REDIS_FAIL_CLOSED="true")
    with (
        gateway_process(env) as gateway,
        httpx.Client(timeout=10, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        assert client.post(gateway.url + "/api/chat", json=CHAT).status_code == 200
        own_redis.kill()
        native = client.post(gateway.url + "/api/chat", json=CHAT)
        openai = client.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        )
        ready = _readyz(gateway)
    assert native.status_code == 503
    assert native.json() == {"error": "rate limits cannot be checked: the shared limit store (Redis) is unreachable"}
    assert openai.status_code == 503
    assert openai.json()["error"]["code"] == "limiter_unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "unavailable"


def test_several_workers_without_redis_are_refused(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(GATEWAY_WORKERS="2", GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path / 'gateway.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GATEWAY_WORKERS" in lines[0]
