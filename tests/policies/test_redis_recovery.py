"""Redis back from an outage: a stalled (SIGSTOP) or killed and restarted Redis leaves no lease and
no reservation behind the requests that took them, however its gateways' scripts were cut off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from gateway.keys.apikey import key_id_of
from gateway.keys.store import Limits
from gateway.policies.limits import Quota
from gateway.policies.limits.memory import MemoryLimiter
from gateway.policies.limits.redis import DEGRADED, RedisLimiter
from gateway.policies.limits.scripts import ACQUIRE, RENEW, SETTLE, key_names
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.redis_server import RedisServer
from tests.servers import GatewayProcess, gateway_process

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
WAIT = 10.0
# The fake's answers: a prompt of 7 tokens and one token per piece generated.
PROMPT = 7
REPLY = 3  # pieces of a plain answer
LONG = 5  # pieces of the stream that outlives the outage
PAIR = 2  # pieces of each of the two streams after it
BURST = 6


def _until(check: Callable[[], bool], what: str) -> None:
    """Bounded polling, for what nothing announces (a settlement reaching Redis)."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


async def _burst(url: str, key: str) -> list[int]:
    async with httpx.AsyncClient(timeout=WAIT, headers={"Authorization": f"Bearer {key}"}) as client:
        answers = await asyncio.gather(*(client.post(url + "/api/chat", json=CHAT) for _ in range(BURST)))
    return [answer.status_code for answer in answers]


def _outage_mid_burst(
    fake: FakeOllama, database_url: str, server: RedisServer, outage: Callable[[], AbstractContextManager[None]]
) -> None:
    """A key with two concurrent requests and a day budget: requests before the outage, a stream
    admitted before it that ends during it, a burst during it; then, as soon as the gateway is back
    on Redis, two concurrent requests must be admitted and the day count must be exactly the
    tokens of the requests Redis admitted."""
    secret = issue_key(database_url, "recovering", limits=Limits(concurrency=2, tpd=1_000_000))
    key_id = key_id_of(secret)
    state, leases = f"gateway:limits:{{{key_id}}}:state", f"gateway:limits:{{{key_id}}}:leases"
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_REDIS_URL": server.url}
    with (
        gateway_process(env) as gateway,
        httpx.Client(timeout=WAIT, headers={"Authorization": f"Bearer {secret}"}) as client,
        redis.Redis.from_url(server.url) as store,
        ExitStack() as streams,
    ):
        chat = gateway.url + "/api/chat"
        for _ in range(3):
            assert client.post(chat, json=CHAT).status_code == 200
        long_gate = StepGate()
        fake.behaviour = Behaviour(tokens=LONG, gate=long_gate)
        long = streams.enter_context(client.stream("POST", chat, json={**CHAT, "stream": True}))
        assert long.status_code == 200
        fake.behaviour = Behaviour()
        _until(lambda: store.zcard(leases) == 1, "the first requests settled in Redis")

        with outage():
            statuses = asyncio.run(_burst(gateway.url, secret))
            # Served on local limits (two at a time), whatever Redis does with their scripts later.
            assert set(statuses) <= {200, 429}
            assert 200 in statuses
            long_gate.release(LONG)
            assert long.read().count(b"\n") == LONG + 1
            long.close()
            gateway.stderr.wait_for("redis unreachable")
        _wait_back(gateway)

        pair_gate = StepGate()
        fake.behaviour = Behaviour(tokens=PAIR, gate=pair_gate)
        pair = [streams.enter_context(client.stream("POST", chat, json={**CHAT, "stream": True})) for _ in range(2)]
        refused = [response.read() for response in pair if response.status_code != 200]
        assert [response.status_code for response in pair] == [200, 200], refused
        pair_gate.release(2 * PAIR)
        for response in pair:
            assert response.read().count(b"\n") == PAIR + 1
            response.close()
        _until(lambda: store.zcard(leases) == 0, "every lease settled")
        used = store.hget(state, "used")
    assert used == str(3 * (PROMPT + REPLY) + (PROMPT + LONG) + 2 * (PROMPT + PAIR)).encode()


def _wait_back(gateway: GatewayProcess) -> None:
    gateway.stderr.wait_for("redis reachable again", WAIT)


def test_a_stalled_redis_leaves_no_phantom_lease_or_charge(
    fake: FakeOllama, shared_redis: RedisServer, database_url: str
) -> None:
    # SIGSTOP: the burst's scripts queue in Redis's sockets and run when it resumes, long after
    # the gateway stopped waiting for them.
    _outage_mid_burst(fake, database_url, shared_redis, shared_redis.paused)


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps its data on disk across a kill."""
    with RedisServer(data=tmp_path) as server:
        yield server


def test_a_restarted_redis_leaves_no_phantom_lease_or_charge(
    fake: FakeOllama, persistent_redis: RedisServer, database_url: str
) -> None:
    # Killed and restarted from its append-only file: the stream's lease and reservation come back,
    # but its settlement, made while Redis was down, never reached it.
    @contextmanager
    def killed() -> Iterator[None]:
        persistent_redis.kill()
        try:
            yield
        finally:
            persistent_redis.start()

    _outage_mid_burst(fake, database_url, persistent_redis, killed)


def _redis_now(store: redis.Redis) -> float:
    seconds, micros = store.time()
    return seconds + micros / 1e6


def test_acquire_takes_nothing_after_its_callers_deadline_and_charges_a_repeat_once(redis_url: str) -> None:
    keys = key_names("late")
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        now = _redis_now(store)

        def acquire(lease: str, deadline: float) -> list[str]:
            # rpm 10, tpd 1000, concurrency 2; 40 tokens; a lease of 60 s.
            reply = store.eval(ACQUIRE, 3, *keys, "10", "", "1000", "2", "40", lease, "60", f"{deadline:.6f}")
            return [str(part) for part in reply]

        late = acquire("gone:1", now - 0.001)
        assert late[0] == "5"
        assert store.keys("*") == []
        first = acquire("here:1", now + 60)
        again = acquire("here:1", now + 60)
        assert (first[0], again[0]) == ("0", "0")
        # Charged once: one request from the bucket of 10, 40 tokens from the day.
        assert store.hmget(keys[0], "rl", "used") == ["9", "40"]
        assert store.zrange(keys[1], 0, -1) == ["here:1"]


def test_the_first_grant_of_a_day_drops_the_records_of_dead_gateways_only(redis_url: str) -> None:
    state, leases, grants = key_names("days")
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        now = _redis_now(store)
        today = int(now // 86400)
        # Yesterday's grants: one of a gateway that died (its lease expired), one still running.
        store.hset(grants, mapping={"dead:1": f"0 30 {today - 1}", "alive:1": f"0 20 {today - 1}", "#day": today - 1})
        store.zadd(leases, {"alive:1": now + 60})
        store.eval(ACQUIRE, 3, state, leases, grants, "", "", "", "", "10", "new:1", "60", f"{now + 60:.6f}")
        assert store.hgetall(grants) == {"alive:1": f"0 20 {today - 1}", "new:1": f"0 10 {today}", "#day": str(today)}
        assert store.eval(SETTLE, 3, state, leases, grants, "", "alive:1", "5", "new:1", "10") == 2
        assert store.exists(grants, leases) == 0  # nothing left of an idle key but its day count
        assert store.hget(state, "used") == "10"


def test_renewal_keeps_unsettled_grants_only_and_never_late(redis_url: str) -> None:
    state, leases, grants = key_names("renew")
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        now = _redis_now(store)
        for lease in ("running:1", "ended:1"):
            store.eval(ACQUIRE, 3, state, leases, grants, "", "", "", "", "10", lease, "60", f"{now + 60:.6f}")
        store.eval(SETTLE, 3, state, leases, grants, "", "ended:1", "10")
        store.zrem(leases, "running:1")  # expired during an outage longer than a lease
        assert store.eval(RENEW, 2, leases, grants, "60", f"{now - 0.001:.6f}", "running:1", "ended:1") == 0
        assert store.zcard(leases) == 0
        assert store.eval(RENEW, 2, leases, grants, "60", f"{now + 60:.6f}", "running:1", "ended:1") == 1
        assert store.zrange(leases, 0, -1) == ["running:1"]


class _Relay:
    """A TCP relay to Redis that can hold Redis's answers back: a call runs, its caller never hears."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.answers = asyncio.Event()
        self.answers.set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers += [client_out, server_out]
        for pipe in (self._pipe(client_in, server_out, held=False), self._pipe(server_in, client_out, held=True)):
            task = asyncio.get_running_loop().create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, held: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if held:
                    await self.answers.wait()
                sink.write(data)
                await sink.drain()
        sink.close()


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[_Relay]:
    relayed = _Relay(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    yield relayed
    await relayed.close()


async def test_a_grant_whose_answer_never_arrived_is_given_back_before_sharing_again(
    redis_url: str, relay: _Relay
) -> None:
    limiter = RedisLimiter(await relay.start(), fallback=MemoryLimiter(), retry_interval=0.05, socket_timeout=0.3)
    await limiter.start()
    quota = Quota(concurrency=1, tpd=1000)
    leases = "gateway:limits:{unheard}:leases"
    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        try:
            # Redis knows the scripts (a first call loads them), so a held call runs all the same.
            limiter.settle("other", quota, await limiter.acquire("other", quota, 0), 0)
            await limiter.flush()
            relay.answers.clear()
            # Redis grants it and charges 40 tokens, but the answer is held past the socket timeout:
            # the caller is served on local limits instead.
            local = await limiter.acquire("unheard", quota, 40)
            assert limiter.status() == DEGRADED
            assert store.zcard(leases) == 1
            assert store.hget("gateway:limits:{unheard}:state", "used") == "40"
            relay.answers.set()
            deadline = time.monotonic() + WAIT
            while limiter.status() != "ok":
                assert time.monotonic() < deadline, "never back on redis"
                await asyncio.sleep(0.02)
            # Given back before the limiter said it was back: no lease, no charge.
            assert store.zcard(leases) == 0
            assert store.hget("gateway:limits:{unheard}:state", "used") == "0"
            assert store.exists("gateway:limits:{unheard}:grants") == 0
            limiter.settle("unheard", quota, local, 0)
            shared = await limiter.acquire("unheard", quota, 10)
            assert store.zrange(leases, 0, -1) == [shared.lease]
        finally:
            await limiter.close()
