"""The in-process limiter and the fair queue, on their own (a fake clock where time matters)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import QueueTimeout, RateLimited
from gateway.fleet.queue import FairQueue
from gateway.keys.store import UNLIMITED, Limits
from gateway.policies.limits import Quota, Window, duration, window_headers
from gateway.policies.limits.memory import MemoryLimiter
from gateway.policies.limits.policy import effective

DAY_START = 1_800_000_000.0 - (1_800_000_000.0 % 86400)  # a UTC midnight


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, wall: Clock | None = None) -> MemoryLimiter:
    return MemoryLimiter(clock=clock, wall=wall or Clock(DAY_START + 3600))


async def test_requests_per_minute_is_exact_and_refills() -> None:
    clock = Clock()
    subject = limiter(clock)
    quota = Quota(rpm=3)
    grants = [await subject.acquire("k", quota, 0) for _ in range(3)]
    assert [grant.requests.remaining for grant in grants if grant.requests] == [2, 1, 0]
    with pytest.raises(RateLimited) as caught:
        await subject.acquire("k", quota, 0)
    assert caught.value.headers["retry-after-ms"] == "20000"
    assert caught.value.headers["Retry-After"] == "20"
    assert caught.value.headers["x-should-retry"] == "true"
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 20
    assert (await subject.acquire("k", quota, 0)).requests == Window(3, 0, 60.0)
    # Another key has its own bucket.
    await subject.acquire("other", quota, 0)


async def test_tokens_are_reserved_then_settled_to_real_counts() -> None:
    clock = Clock()
    subject = limiter(clock)
    quota = Quota(tpm=1000)
    first = await subject.acquire("k", quota, 600)
    assert first.tokens is not None
    assert first.tokens.remaining == 400
    # A second request that would overshoot the reserved budget waits.
    with pytest.raises(RateLimited) as caught:
        await subject.acquire("k", quota, 600)
    assert "1000 tokens per minute" in caught.value.message
    subject.settle("k", quota, first, 100)  # it used far less than reserved
    second = await subject.acquire("k", quota, 600)
    assert second.tokens is not None
    assert second.tokens.remaining == 300
    subject.settle("k", quota, second, 1500)  # and this one more: the balance goes negative
    with pytest.raises(RateLimited) as caught:
        await subject.acquire("k", quota, 1)
    # 300 + 600 reserved back - 1500 used = -600: one more token needs 601 tokens of refill.
    assert caught.value.headers["retry-after-ms"] == str(601 * 60)


async def test_a_reservation_never_exceeds_the_whole_budget() -> None:
    subject = limiter(Clock())
    grant = await subject.acquire("k", Quota(tpm=100), 5000)
    assert grant.reserved_minute == 100


async def test_daily_budget_says_waiting_cannot_help() -> None:
    wall = Clock(DAY_START + 86400 - 30)
    subject = limiter(Clock(), wall)
    quota = Quota(tpd=100)
    grant = await subject.acquire("k", quota, 80)
    subject.settle("k", quota, grant, 90)
    with pytest.raises(RateLimited) as caught:
        await subject.acquire("k", quota, 20)
    assert caught.value.headers["x-should-retry"] == "false"
    assert caught.value.headers["Retry-After"] == "30"
    wall.now += 31  # a new UTC day
    await subject.acquire("k", quota, 20)


async def test_concurrency_cap_and_release() -> None:
    subject = limiter(Clock())
    quota = Quota(concurrency=2)
    first = await subject.acquire("k", quota, 0)
    await subject.acquire("k", quota, 0)
    with pytest.raises(RateLimited) as caught:
        await subject.acquire("k", quota, 0)
    assert "concurrent" in caught.value.message
    subject.settle("k", quota, first, 0)
    subject.settle("k", quota, first, 0)  # settling twice frees one slot only
    await subject.acquire("k", quota, 0)
    with pytest.raises(RateLimited):
        await subject.acquire("k", quota, 0)


async def test_a_refused_request_charges_nothing() -> None:
    subject = limiter(Clock())
    quota = Quota(rpm=10, tpm=100)
    await subject.acquire("k", quota, 90)
    with pytest.raises(RateLimited):
        await subject.acquire("k", quota, 50)
    grant = await subject.acquire("k", quota, 10)
    assert grant.requests is not None
    assert grant.requests.remaining == 8  # the refused request took no request slot


def test_key_values_override_defaults_and_unlimited_lifts_them() -> None:
    defaults = Quota(rpm=60, tpm=1000, tpd=None, concurrency=4)
    assert effective(Limits(), defaults) == defaults
    assert effective(Limits(rpm=5, tpm=UNLIMITED, tpd=10), defaults) == Quota(5, None, 10, 4)


def test_header_values() -> None:
    assert [duration(value) for value in (0.02, 1, 59.2, 360)] == ["20ms", "1s", "1m0s", "6m0s"]
    assert window_headers(Window(60, 59, 1.0), None) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"1s"),
    ]


async def test_fair_queue_serves_keys_in_turn() -> None:
    queue = FairQueue(1, timeout=5)
    holder = await queue.acquire("a")
    assert holder.position == 0
    order: list[str] = []

    async def request(key: str) -> None:
        await queue.acquire(key)
        order.append(key)
        queue.release()

    # Key a queues five requests first, then key b one.
    tasks = [asyncio.create_task(request("a")) for _ in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(request("b")))
    await asyncio.sleep(0)
    assert queue.waiting == 6
    queue.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    # First come first served would put b last; round-robin puts it second.
    assert order == ["a", "b", "a", "a", "a", "a"]
    assert queue.in_use == 0


async def test_weights_give_more_turns() -> None:
    queue = FairQueue(1, timeout=5)
    await queue.acquire("x")
    order: list[str] = []

    async def request(key: str, weight: int) -> None:
        await queue.acquire(key, weight)
        order.append(key)
        queue.release()

    tasks = [asyncio.create_task(request("heavy", 2)) for _ in range(4)]
    tasks += [asyncio.create_task(request("light", 1)) for _ in range(2)]
    await asyncio.sleep(0)
    queue.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["heavy", "heavy", "light", "heavy", "heavy", "light"]


async def test_queue_wait_is_bounded_and_leaving_frees_the_place() -> None:
    queue = FairQueue(1, timeout=0.05)
    await queue.acquire("a")
    with pytest.raises(QueueTimeout) as caught:
        await queue.acquire("b")
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "5"
    assert queue.waiting == 0
    patient = FairQueue(1, timeout=5)
    await patient.acquire("a")
    leaving = asyncio.create_task(patient.acquire("b"))
    staying = asyncio.create_task(patient.acquire("c"))
    await asyncio.sleep(0)
    leaving.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert patient.waiting == 1
    patient.release()
    ticket = await asyncio.wait_for(staying, 5)
    assert ticket.position == 2
    assert patient.in_use == 1


async def test_a_waiter_cancelled_before_it_could_leave_takes_no_slot() -> None:
    queue = FairQueue(1, timeout=5)
    await queue.acquire("a")
    leaving = asyncio.create_task(queue.acquire("b"))
    staying = asyncio.create_task(queue.acquire("c"))
    await asyncio.sleep(0)
    # Cancelled, and a slot freed, before the cancelled task has run to leave the queue: what
    # happens when the gateway ends every open request at once at shutdown.
    leaving.cancel()
    queue.release()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    ticket = await asyncio.wait_for(staying, 5)
    assert (ticket.position, queue.in_use, queue.waiting) == (2, 1, 0)


def test_a_zero_limit_blocks_the_key_without_dividing_by_zero() -> None:
    assert MemoryLimiter()._state("k", Quota(rpm=0), 0.0).requests.window(0) == Window(0, 0, 0.0)  # type: ignore[union-attr]
