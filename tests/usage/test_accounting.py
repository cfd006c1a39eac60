"""Usage accounting: per key, model and UTC day, from the upstream's own counts, batched to SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping

import httpx
import pytest

from gateway.errors import DatabaseUnavailable
from gateway.observe.record import RequestRecord
from gateway.usage.accounting import UsageLedger
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.records import make_record
from tests.servers import RunningGateway, gateway_process, raw_post, read_until

pytestmark = pytest.mark.timeout(30)

FLUSH_TIMEOUT = 5.0
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
Row = tuple[str, str, str, int, int, int, int]


def usage_rows(database_url: str) -> list[Row]:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
        return connection.execute(
            "SELECT day, key_name, model, requests, prompt_tokens, completion_tokens, errors FROM usage "
            "ORDER BY key_name, model, day"
        ).fetchall()


def wait_for_requests(database_url: str, requests: int) -> list[Row]:
    """Poll until periodic flushes have written ``requests`` requests (there is no event to wait on)."""
    deadline = time.monotonic() + FLUSH_TIMEOUT
    while True:
        rows = usage_rows(database_url)
        if sum(row[3] for row in rows) >= requests:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def test_usage_rows_for_every_dialect_and_a_disconnect(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    names = ["ndjson", "json", "sse", "sse-plain", "v1-json", "v1-completions", "embed", "cut"]
    keys = {name: issue_key(database_url, name) for name in names}
    gateway = make_gateway(usage_flush_interval=0.05)
    day = today()

    def post(name: str, path: str, body: Mapping[str, object]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {keys[name]}"}
        response = httpx.post(gateway.url + path, json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response

    post("ndjson", "/api/chat", CHAT)
    post("json", "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False})
    post("sse", "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    post("sse-plain", "/v1/chat/completions", {**CHAT, "stream": True})
    post("v1-json", "/v1/chat/completions", CHAT)
    completion = {"model": "llama3.2", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    post("v1-completions", "/v1/completions", completion)
    post("embed", "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]})

    gate = StepGate()
    fake.behaviour = Behaviour(tokens=50, gate=gate)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {keys['cut']}"}
    with raw_post(gateway.url, "/api/chat", json.dumps(CHAT).encode(), headers) as sock:
        gate.release(1)
        read_until(sock, b'"done":false', 2)

    llama, embedder = "llama3.2:latest", "nomic-embed-text:latest"
    assert wait_for_requests(database_url, len(names)) == [
        # A client that leaves is not an error; its tokens are what was produced (estimated).
        (day, "cut", llama, 1, 0, 2, 0),
        (day, "embed", embedder, 1, 14, 0, 0),
        (day, "json", llama, 1, 7, 3, 0),
        (day, "ndjson", llama, 1, 7, 3, 0),
        (day, "sse", llama, 1, 7, 3, 0),
        # The gateway asks for usage on the client's behalf, so these counts are exact too.
        (day, "sse-plain", llama, 1, 7, 3, 0),
        (day, "v1-completions", llama, 1, 7, 3, 0),
        (day, "v1-json", llama, 1, 7, 3, 0),
    ]


def test_graceful_shutdown_writes_everything(fake: FakeOllama, database_url: str) -> None:
    key = issue_key(database_url, "steady")
    # Nothing is written periodically within the test: only the shutdown flush can write.
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_USAGE_FLUSH_INTERVAL": "60"}
    headers = {"Authorization": f"Bearer {key}"}
    with gateway_process(env) as process, httpx.Client(base_url=process.url, headers=headers, timeout=10) as client:
        assert client.post("/api/chat", json=CHAT).status_code == 200
        assert client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}).is_success
        gate = StepGate()
        fake.behaviour = Behaviour(tokens=4, gate=gate)
        with client.stream("POST", "/api/chat", json=CHAT) as stream:
            lines = stream.iter_lines()
            assert json.loads(next(lines))["done"] is False
            process.process.terminate()
            deadline = time.monotonic() + FLUSH_TIMEOUT
            while not any("Shutting down" in line for line in process.stderr.lines):
                assert time.monotonic() < deadline, process.stderr.lines
                time.sleep(0.01)
            # The stream in flight when SIGTERM arrived is allowed to finish, and is counted.
            gate.release(10)
            assert json.loads(list(lines)[-1])["done"] is True
        code = process.process.wait(timeout=15)
    # uvicorn re-raises the signal after a clean shutdown.
    assert code in (0, -15)
    assert any("Application shutdown complete" in line for line in process.stderr.lines)
    assert usage_rows(database_url) == [(today(), "steady", "llama3.2:latest", 3, 21, 10, 0)]


def record(**fields: object) -> RequestRecord:
    # Usage rows carry the model as normalised by the access policy.
    return make_record(**{"time": 1_767_225_600.0, "model": "llama3.2:latest", **fields})


class MemoryStore:
    """A UsageStore that keeps batches in memory; ``fail`` makes the next writes raise."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[dict[UsageKey, UsageCounts]] = []
        self.fail = fail
        self.closed = False

    def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
        if self.fail:
            self.fail -= 1
            raise DatabaseUnavailable("database is locked")
        self.batches.append(dict(rows))

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


async def test_ledger_aggregates_per_day_key_and_model() -> None:
    store = MemoryStore()
    ledger = UsageLedger(lambda: store, flush_interval=60)
    await ledger.start()
    ledger(record())
    ledger(record(prompt_tokens=1, completion_tokens=1, status=404, upstream_status=404))
    ledger(record(outcome="client_disconnect", completion_tokens=2, prompt_tokens=0, tokens_exact=False))
    ledger(record(outcome="upstream_error", completion_tokens=4, prompt_tokens=0))
    ledger(record(outcome="forbidden", status=403, model=None, prompt_tokens=0, completion_tokens=0))
    ledger(record(time=1_767_225_600.0 + 86_400, key_id="k2", key_name="bob"))
    ledger(record(key_id=None, key_name=None, outcome="unauthorized", status=401))  # nobody to charge
    await ledger.close()
    assert store.closed
    assert store.batches == [
        {
            UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(4, 8, 10, 2),
            UsageKey("2026-01-01", "k1", "alice", ""): UsageCounts(1, 0, 0, 1),
            UsageKey("2026-01-02", "k2", "bob", "llama3.2:latest"): UsageCounts(1, 7, 3, 0),
        }
    ]


async def test_a_refused_write_is_retried_not_lost() -> None:
    store = MemoryStore(fail=1)
    ledger = UsageLedger(lambda: store, flush_interval=60)
    await ledger.start()
    ledger(record())
    await ledger.flush()
    assert store.batches == []
    ledger(record())
    await ledger.close()
    assert store.batches == [{UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(2, 14, 6, 0)}]


async def test_close_waits_for_a_write_in_progress() -> None:
    class SlowStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()
            self.closed_while_writing = False
            self.writing = False

        def add(self, rows: Mapping[UsageKey, UsageCounts]) -> None:
            self.writing = True
            self.entered.set()
            self.release.wait(5)
            super().add(rows)
            self.writing = False

        def close(self) -> None:
            self.closed_while_writing = self.writing
            super().close()

    store = SlowStore()
    ledger = UsageLedger(lambda: store, flush_interval=0.01)
    await ledger.start()
    ledger(record())
    assert await asyncio.to_thread(store.entered.wait, 5)  # the periodic flush is inside add()
    closing = asyncio.get_running_loop().create_task(ledger.close())
    for _ in range(20):  # let close() run as far as it can without the write finishing
        await asyncio.sleep(0)
    store.release.set()
    await asyncio.wait_for(closing, 5)
    assert not store.closed_while_writing
    assert store.batches == [{UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(1, 7, 3, 0)}]


async def test_sqlite_store_adds_up_and_reports(database_url: str) -> None:
    ledger = UsageLedger(lambda: open_usage_store(database_url), flush_interval=60)
    await ledger.start()
    ledger(record())
    await ledger.flush()
    ledger(record(completion_tokens=5))
    ledger(record(key_id="k2", key_name="bob", model="qwen3:latest", status=500, outcome="upstream_error"))
    await ledger.close()
    store = open_usage_store(database_url)
    try:
        assert store.report(by="key") == [("alice", UsageCounts(2, 14, 8, 0)), ("bob", UsageCounts(1, 7, 3, 1))]
        assert store.report(by="model", key_name="bob") == [("qwen3:latest", UsageCounts(1, 7, 3, 1))]
        assert store.report(by="day", since="2026-01-02") == []
    finally:
        store.close()


async def test_a_store_refusing_many_writes_is_logged_once_and_once_back() -> None:
    store = MemoryStore(fail=5)
    ledger = UsageLedger(lambda: store, flush_interval=60)
    seen: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Lines(logging.WARNING)
    logging.getLogger("gateway.usage").addHandler(handler)
    try:
        await ledger.start()
        for _ in range(6):
            ledger(record())
            await ledger.flush()
        await ledger.close()
    finally:
        logging.getLogger("gateway.usage").removeHandler(handler)
    assert seen == ["usage not written yet (kept in memory, retried): database is locked", "usage written again"]
    assert store.batches == [{UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(6, 42, 18, 0)}]
