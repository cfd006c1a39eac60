from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.database.postgres import PostgresDatabase
from gateway.fleet import Fleet, State
from gateway.keys.store import DEFAULT_SCOPES, KeyRecord, Limits, Scope, open_keystore
from gateway.policies.routing import RoutingPolicy
from gateway.settings import Settings
from tests.fake_ollama import FakeOllama
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.servers import RunningGateway, gateway_thread
from tests.shipped import KINDS, Venv, shipped

ALL_SCOPES = frozenset(Scope)
FLEET_WAIT = 10.0
FLEET_CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture(scope="session")
def _shared_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(_shared_redis: RedisServer) -> Iterator[str]:
    """The session's Redis server, emptied for each test."""
    client = redis.Redis.from_url(_shared_redis.url)
    client.flushall()
    yield _shared_redis.url
    client.close()


@pytest.fixture
def shared_redis(_shared_redis: RedisServer, redis_url: str) -> RedisServer:
    """The session's Redis server itself, emptied, for a test that pauses it (and resumes it)."""
    return _shared_redis


@pytest.fixture(scope="session")
def shipped_venvs() -> dict[str, Venv]:
    """The gateway installed each way it ships (tests/shipped.py), built side by side when what
    they are built from has changed. A failed build is an error of the tests that need it."""
    with ThreadPoolExecutor(len(KINDS)) as pool:
        return dict(zip(KINDS, pool.map(shipped, KINDS), strict=True))


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def fake(_fake_server: FakeOllama) -> Iterator[FakeOllama]:
    """The fake Ollama, with default behaviour and an empty request record."""
    _fake_server.reset()
    yield _fake_server
    _fake_server.reset()


def gateway_settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def issue_key(
    database_url: str,
    name: str,
    *,
    scopes: frozenset[Scope] = DEFAULT_SCOPES,
    models: tuple[str, ...] = (),
    limits: Limits | None = None,
    expires_at: float | None = None,
) -> str:
    """Create a key in the database the way the CLI does; returns the secret."""
    return issue_keys(database_url, [name], scopes=scopes, models=models, limits=limits, expires_at=expires_at)[0]


def issue_keys(
    database_url: str,
    names: Iterable[str],
    *,
    scopes: frozenset[Scope] = DEFAULT_SCOPES,
    models: tuple[str, ...] = (),
    limits: Limits | None = None,
    expires_at: float | None = None,
) -> list[str]:
    """``issue_key`` for many names, the database opened once; returns the secrets in order."""
    store = open_keystore(database_url)
    try:
        return [
            store.create(
                KeyRecord(
                    id="",
                    name=name,
                    digest="",
                    created_at=0.0,
                    scopes=scopes,
                    models=models,
                    limits=limits or Limits(),
                    expires_at=expires_at,
                )
            )[1]
            for name in names
        ]
    finally:
        store.close()


def forget_startup_check(fake: FakeOllama) -> None:
    """A gateway asks for /api/version once it has started (see gateway/observe/startup.py): wait for
    that request and drop it, so a test sees only the requests it caused."""
    probe = fake.wait_for_request()
    assert (probe.method, probe.path) == ("GET", "/api/version")
    fake.forget_requests()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="session")
def shared_postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, with a database migrated once as every test's template."""
    with PostgresServer() as server:
        template = server.new_database()
        database = PostgresDatabase(server.url(template))
        try:
            database.open()
        finally:
            database.close()
        server.template = template
        yield server


@pytest.fixture
def postgres_url(shared_postgres: PostgresServer) -> str:
    """A fresh database of its own (migrated) on the session's PostgreSQL server."""
    return shared_postgres.url(shared_postgres.new_database(shared_postgres.template))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: a new SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def make_gateway(fake: FakeOllama, database_url: str) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway with settings overrides (and an all-scopes key); stopped after the test."""
    with ExitStack() as stack:
        counter = iter(range(1_000_000))

        def start(**overrides: Any) -> RunningGateway:
            overrides.setdefault("upstream_url", fake.url)
            overrides.setdefault("database_url", database_url)
            overrides.setdefault("key_refresh_interval", 0.05)
            key = issue_key(overrides["database_url"], f"test-admin-{next(counter)}", scopes=ALL_SCOPES)
            running = stack.enter_context(gateway_thread(gateway_settings(**overrides)))
            running.key = key
            if overrides["upstream_url"] == fake.url:
                forget_startup_check(fake)
            return running

        yield start


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway in front of the fake, default settings, with ``gateway.key`` for every scope."""
    return make_gateway()


@dataclass
class Fleetside:
    """A gateway in front of named fakes."""

    gateway: RunningGateway
    fakes: dict[str, FakeOllama]
    key: str  # every scope, every model

    @property
    def fleet(self) -> Fleet:
        (routing,) = [p for p in self.gateway.app.forwarded.policies if isinstance(p, RoutingPolicy)]
        return routing.fleet

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def chat(self, model: str, key: str | None = None, **extra: Any) -> httpx.Response:
        body = {**FLEET_CHAT, "model": model, **extra}
        return httpx.post(self.gateway.url + "/api/chat", json=body, headers=self.auth(key), timeout=FLEET_WAIT)

    def served(self, path: str = "/api/chat") -> dict[str, int]:
        """How many requests for ``path`` each fake received."""
        return {name: sum(r.path == path for r in fake.requests) for name, fake in self.fakes.items()}

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        # The watchers work in the background and announce nothing: poll, bounded.
        deadline = time.monotonic() + FLEET_WAIT
        while not condition():
            assert time.monotonic() < deadline, f"never: {what}"
            time.sleep(0.01)

    def all_up(self) -> None:
        self.wait_until(lambda: all(m.state is State.UP for m in self.fleet.members), "every server up")

    def forget(self) -> None:
        for fake in self.fakes.values():
            fake.forget_requests()


@pytest.fixture
def make_fleet(tmp_path: Any) -> Iterator[Callable[..., Fleetside]]:
    with ExitStack() as stack:

        def start(
            models: dict[str, list[str]], *, versions: dict[str, str] | None = None, **overrides: Any
        ) -> Fleetside:
            fakes = {
                name: stack.enter_context(FakeOllama(listed, version=(versions or {}).get(name, "0.33.0")))
                for name, listed in models.items()
            }
            database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
            key = issue_key(database_url, "admin", scopes=ALL_SCOPES)
            overrides.setdefault("upstreams", ",".join(f"{name}={fake.url}" for name, fake in fakes.items()))
            overrides.setdefault("upstream_refresh_interval", 60)
            settings = gateway_settings(database_url=database_url, key_refresh_interval=0.05, **overrides)
            side = Fleetside(stack.enter_context(gateway_thread(settings)), fakes, key)
            side.all_up()
            side.forget()
            return side

        yield start
