"""The database under threads, files replaced or removed under a running gateway, and a readiness
check that proves the file can be written."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.database.sqlite import Database, DatabaseGone
from gateway.errors import DatabaseFailed, DatabaseUnavailable
from gateway.keys.keyring import Keyring
from gateway.keys.management import KeyAdmin
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import DuplicateKey, KeyChanges, KeyRecord, open_keystore
from gateway.routes import endpoints
from gateway.routes.endpoints import DATABASE_PROBE_TIMEOUT, database_check
from gateway.usage.store import SqliteUsageStore, UsageCounts, UsageKey
from tests.conftest import issue_key
from tests.database.test_outage import logged
from tests.fake_ollama import FakeOllama
from tests.servers import GatewayProcess, RunningGateway, gateway_process

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
ROW = UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest")


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another writer (the CLI, a backup) holding the database's write lock until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy made with SQLite's backup API (how a backup should be taken)."""
    with sqlite3.connect(source) as reading, sqlite3.connect(target) as writing:
        reading.backup(writing)
    reading.close()
    writing.close()


def usage_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT key_name, SUM(requests) FROM usage GROUP BY key_name").fetchall()
    connection.close()
    return {name: int(count) for name, count in rows}


# --- closing under threads ------------------------------------------------------------------


class _BlockingKeyStore:
    """A key store whose first ``record_use`` blocks until released, and that notes any close
    made while a call is still running in another thread."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.running = 0
        self.closed_while_running = False
        self.closed = False
        self.writes: list[dict[str, float]] = []
        self._blocked_once = False

    def changes(self, cursor: Hashable | None) -> KeyChanges:
        return KeyChanges(1, [], full=True)

    def record_use(self, last_used: Mapping[str, float]) -> None:
        self.running += 1
        try:
            if not self._blocked_once:
                self._blocked_once = True
                self.entered.set()
                self.release.wait(10)
            self.writes.append(dict(last_used))
        finally:
            self.running -= 1

    def close(self) -> None:
        self.closed_while_running = self.running > 0
        self.closed = True


async def test_keyring_close_waits_for_the_write_its_poller_began() -> None:
    store = _BlockingKeyStore()
    keyring = Keyring(lambda: store, refresh_interval=0.01)
    await keyring.start()
    keyring.note_use("k1")
    assert await asyncio.to_thread(store.entered.wait, 10)  # the poller's flush is inside record_use
    closing = asyncio.get_running_loop().create_task(keyring.close())
    # As far as close() gets while that write is still running (it must not close the store).
    done, _ = await asyncio.wait([closing], timeout=0.5)
    assert not done
    closed_early = store.closed
    store.release.set()
    await asyncio.wait_for(closing, 10)
    assert not closed_early
    assert store.closed
    assert not store.closed_while_running
    assert [set(write) for write in store.writes if write] == [{"k1"}]


def test_close_waits_for_a_statement_running_in_another_thread(database_url: str, tmp_path: Path) -> None:
    database = Database(database_url, busy_timeout=10)
    database.open()
    store = SqliteKeyStore(database)
    key = issue_key(database_url, "alice")
    key_id = key.split("_")[1]
    wrote: list[BaseException | None] = []
    with write_lock(tmp_path / "gateway.db"):
        # The write waits for the lock inside the database's lock, in its own thread.
        writer = threading.Thread(target=lambda: wrote.append(_attempt(lambda: store.record_use({key_id: 42.0}))))
        writer.start()
        assert _wait_until(lambda: database.busy)
        closer = threading.Thread(target=database.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # waiting for the running write, not closing under it
    writer.join(10)
    closer.join(10)
    assert wrote == [None]
    with sqlite3.connect(tmp_path / "gateway.db") as check:
        assert check.execute("SELECT last_used_at FROM keys WHERE id = ?", (key_id,)).fetchone() == (42.0,)
    check.close()
    with pytest.raises(DatabaseUnavailable):
        store.load()  # closed for good: an error, never a crash


def _attempt(work: Callable[[], object]) -> BaseException | None:
    try:
        work()
    except BaseException as error:
        return error
    return None


def _wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    event = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return condition()


# --- SQLite's errors, translated once ---------------------------------------------------------


def test_sqlite_errors_leave_the_database_as_the_gateways_own(database_url: str, tmp_path: Path) -> None:
    database = Database(database_url)
    database.open()
    keys = SqliteKeyStore(database)
    try:
        with write_lock(tmp_path / "gateway.db"):
            locked = _attempt(lambda: database.run(lambda connection: connection.execute("BEGIN IMMEDIATE"), busy=0))
        assert isinstance(locked, DatabaseUnavailable)
        assert (locked.status, locked.message, str(locked)) == (
            503,
            "database unavailable, try again later",
            "database is locked",
        )
        assert isinstance(locked.__cause__, sqlite3.OperationalError)
        # Not a moment's trouble: a statement SQLite cannot run at all.
        broken = _attempt(lambda: database.run(lambda connection: connection.execute("SELECT ?", ())))
        assert type(broken) is DatabaseFailed
        assert (broken.status, broken.message) == (500, "internal error")
        assert str(broken) == str(broken.__cause__)
        assert isinstance(broken.__cause__, sqlite3.ProgrammingError)
        # A refusal of the store itself is not the database's failure: it passes as it is.
        issue_key(database_url, "alice")
        refused = _attempt(lambda: keys.create(KeyRecord(id="", name="alice", digest="", created_at=0.0)))
        assert (type(refused), str(refused)) == (DuplicateKey, "a key named 'alice' already exists")
    finally:
        database.close()


# --- the file under the connection ------------------------------------------------------------


def test_a_replaced_file_is_reopened_and_read_anew(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    database = Database(database_url)
    database.open()
    keys = SqliteKeyStore(database)
    usage = SqliteUsageStore(database)
    issue_key(database_url, "alice")
    issue_key(database_url, "bob")
    before = keys.changes(None).cursor
    assert {record.name: record.revoked for record in keys.load()} == {"alice": False, "bob": False}
    # A backup in which bob is revoked, moved into place.
    backup = tmp_path / "backup.db"
    copy_database(path, backup)
    other = open_keystore(f"sqlite:///{backup}")
    KeyAdmin(other).revoke(other.get("bob").id)
    other.close()
    os.replace(backup, path)
    assert keys.changes(before).full
    assert {record.name: record.revoked for record in keys.load()} == {"alice": False, "bob": True}
    usage.add({ROW: UsageCounts(1, 2, 3, 0)})
    database.close()
    assert usage_rows(path) == {"alice": 1}


def test_a_removed_file_is_neither_written_nor_recreated(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    database = Database(database_url)
    database.open()
    usage = SqliteUsageStore(database)
    usage.add({ROW: UsageCounts(1, 2, 3, 0)})
    kept = tmp_path / "kept.db"
    copy_database(path, kept)
    path.unlink()
    with pytest.raises(DatabaseGone):
        usage.add({ROW: UsageCounts(1, 2, 3, 0)})
    assert not path.exists()
    # A file back at the path (a restored backup): written from then on.
    os.replace(kept, path)
    usage.add({ROW: UsageCounts(1, 2, 3, 0)})
    database.close()
    assert usage_rows(path) == {"alice": 2}


# --- the readiness check ----------------------------------------------------------------------


async def test_the_database_check_writes_within_a_bounded_wait(database_url: str, tmp_path: Path) -> None:
    database = Database(database_url)
    await database.call(database.open)
    check = database_check(database)
    try:
        with logged(endpoints.log.name) as (_, lines):
            assert await check() == "ok"
            with write_lock(tmp_path / "gateway.db"):
                # However many probes arrive while another writer holds the lock: one write at a time,
                # on the database's thread, and the threads that parse request bodies stay free.
                probes = [asyncio.ensure_future(check()) for _ in range(20)]
                assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1) == "free"
                answers = await asyncio.wait_for(asyncio.gather(*probes), DATABASE_PROBE_TIMEOUT + 5)
            assert answers == ["not writable: database is locked"] * 20
            assert await check() == "ok"
            (tmp_path / "gateway.db").unlink()
            assert await check() == "not ready: no database file at its path"
    finally:
        await database.aclose()
    # 22 probes, three lines of the probe's: the outage, its end, the next outage.
    name = tmp_path / "gateway.db"
    assert [line for line in lines.lines if line[1].startswith(f"database {name}")] == [
        (logging.ERROR, f"database {name}: not writable: database is locked"),
        (logging.WARNING, f"database {name} is writable again"),
        (logging.ERROR, f"database {name}: not ready: no database file at its path"),
    ]


@contextmanager
def gateway_on(fake: FakeOllama, database_url: str, **env: str) -> Iterator[GatewayProcess]:
    with gateway_process(
        {
            "GATEWAY_UPSTREAM_URL": fake.url,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_KEY_REFRESH_INTERVAL": "0.1",
            "GATEWAY_USAGE_FLUSH_INTERVAL": "0.1",
            **env,
        }
    ) as gateway:
        yield gateway


def _readyz(gateway: GatewayProcess) -> tuple[int, Any]:
    response = httpx.get(gateway.url + "/readyz", timeout=10)
    return response.status_code, response.json()["checks"]["database"]


def test_readyz_is_not_ready_when_the_disk_refuses_writes(fake: FakeOllama, database_url: str) -> None:
    with gateway_on(fake, database_url) as gateway:
        assert _readyz(gateway) == (200, "ok")
        # Every write past the first byte of a file fails (EFBIG), as on a full or failing disk;
        # a transaction that only begins and rolls back would not notice.
        pid = gateway.process.pid
        limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            status, detail = _readyz(gateway)
            logged = gateway.stderr.wait_for("not writable")
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
        assert status == 503
        assert detail.startswith("not writable: ")
        assert detail != "not writable: "
        assert "rollback" not in detail
        # The log names the real error and the file.
        assert logged.rstrip("\n").endswith(
            f"gateway.database: database {database_url.removeprefix('sqlite:///')}: {detail}"
        )
        assert _readyz(gateway) == (200, "ok")


def test_probes_against_a_locked_database_hold_up_no_request(
    make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway()
    # A body large enough to be parsed on a worker thread.
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (300 * 1024)}]}

    async def scenario() -> tuple[list[int], int]:
        async with httpx.AsyncClient(timeout=30) as client:
            with write_lock(tmp_path / "gateway.db"):
                probes = [asyncio.create_task(client.get(gateway.url + "/readyz")) for _ in range(20)]
                chat = await asyncio.wait_for(client.post(gateway.url + "/api/chat", json=big, headers=gateway.auth), 3)
                answered = await asyncio.gather(*probes)
            return [probe.status_code for probe in answered], chat.status_code

    statuses, chat_status = asyncio.run(scenario())
    assert chat_status == 200
    assert statuses == [503] * 20


def test_a_backup_moved_into_place_takes_effect(fake: FakeOllama, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    alice, bob = issue_key(database_url, "alice"), issue_key(database_url, "bob")
    backup = tmp_path / "backup.db"
    copy_database(path, backup)
    other = open_keystore(f"sqlite:///{backup}")
    KeyAdmin(other).revoke(other.get("bob").id)
    other.close()
    # Nothing is written before shutdown: every count must reach the file at the path then.
    with gateway_on(fake, database_url, GATEWAY_USAGE_FLUSH_INTERVAL="60") as gateway:
        assert _chat(gateway, bob) == 200
        os.replace(backup, path)
        logged = gateway.stderr.wait_for("was replaced")
        expected = f"the database file {path} was replaced: reopened it; its keys apply from now on"
        assert logged == f"WARNING:  gateway.database: {expected}\n"
        assert _chat(gateway, bob) == 401
        assert _chat(gateway, alice) == 200
        gateway.stop()  # drains: the last usage is written
    # Counted in the file now at the path, not in the one moved away.
    assert usage_rows(path) == {"alice": 1, "bob": 1}


def test_a_removed_database_is_reported_and_its_usage_kept_until_one_is_back(
    fake: FakeOllama, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.db"
    alice = issue_key(database_url, "alice")
    kept = tmp_path / "kept.db"
    copy_database(path, kept)
    with gateway_on(fake, database_url) as gateway:
        path.unlink()
        gateway.stderr.wait_for("is gone")
        assert _readyz(gateway) == (503, "not ready: no database file at its path")
        # The keys already loaded still answer; what they use is kept in memory.
        assert [_chat(gateway, alice) for _ in range(3)] == [200, 200, 200]
        assert not path.exists()  # never recreated empty
        os.replace(kept, path)
        gateway.stderr.wait_for("is back")
        assert _readyz(gateway) == (200, "ok")
        gateway.stop()  # drains: the last usage is written
    assert usage_rows(path) == {"alice": 3}


def _chat(gateway: GatewayProcess, key: str) -> int:
    return httpx.post(
        gateway.url + "/api/chat", json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).status_code
