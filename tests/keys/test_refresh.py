"""The keyring's incremental refresh: it reads only what changed since its cursor, and never misses
a change (two in a row to one key, one committed while a read is under way, a revocation, a
rotation, a deletion by hand), and a replaced file or a counter that went back is read in full.
The change feed's contract holds on both backends (``any_database_url``: SQLite and a real
PostgreSQL server); the races and the replaced file are SQLite's own."""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.database import AnyDatabase, open_database
from gateway.database.postgres import PostgresDatabase
from gateway.database.sqlite import Database
from gateway.errors import Unauthorized
from gateway.keys.keyring import Keyring
from gateway.keys.management import KeyAdmin, KeyChange
from gateway.keys.notices import KeyNotices
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.postgres import PostgresKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import open_keystore
from gateway.policies.auth import Authenticator, RequestHead
from gateway.policies.lockout import Lockout
from gateway.proxy.clientaddr import ClientAddress
from tests.conftest import issue_key
from tests.database.test_sqlite import copy_database

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
CLIENT = ClientAddress("127.0.0.1", "http", "127.0.0.1")


@contextmanager
def _admin(database_url: str) -> Iterator[KeyAdmin]:
    """The CLI's view: a store on a connection of its own."""
    store = open_keystore(database_url)
    try:
        yield KeyAdmin(store)
    finally:
        store.close()


def _store(database: AnyDatabase) -> SqliteKeyStore | PostgresKeyStore:
    return PostgresKeyStore(database) if isinstance(database, PostgresDatabase) else SqliteKeyStore(database)


@asynccontextmanager
async def _keyring(database: AnyDatabase) -> AsyncIterator[Keyring]:
    # Never polls during a test: each look is one the test asks for.
    keyring = Keyring(lambda: _store(database), refresh_interval=3600)
    await keyring.start()
    try:
        yield keyring
    finally:
        await keyring.close()


@contextmanager
def _database(database_url: str) -> Iterator[AnyDatabase]:
    database = open_database(database_url)
    database.open()
    try:
        yield database
    finally:
        database.close()


async def _accepts(keyring: Keyring, key: str) -> bool:
    head = RequestHead("GET", "/api/tags", b"", [(b"authorization", f"Bearer {key}".encode())], CLIENT)
    try:
        await Authenticator(keyring, Lockout(limit=1000, window=60)).authenticate(head)
    except Unauthorized:
        return False
    return True


def _id(key: str) -> str:
    return key.split("_")[1]


async def test_a_read_returns_only_the_keys_changed_since_the_cursor(any_database_url: str) -> None:
    database_url = any_database_url
    keys = [issue_key(database_url, f"key-{number}") for number in range(20)]
    with _database(database_url) as database:
        store = _store(database)
        first = store.changes(None)
        assert (first.full, len(first.records)) == (True, 20)
        nothing = store.changes(first.cursor)
        assert (nothing.full, list(nothing.records), list(nothing.removed)) == (False, [], [])
        with _admin(database_url) as admin:
            admin.update(_id(keys[7]), KeyChange(limits={"rpm": 5}))
        changed = store.changes(nothing.cursor)
        assert (changed.full, [(record.id, record.limits.rpm) for record in changed.records]) == (
            False,
            [(_id(keys[7]), 5)],
        )
        # Recording use is not a change.
        store.record_use({_id(keys[3]): 1234.0})
        assert list(store.changes(changed.cursor).records) == []


async def test_every_change_between_two_looks_is_applied_two_to_one_key_included(any_database_url: str) -> None:
    database_url = any_database_url
    alice, bob = issue_key(database_url, "alice"), issue_key(database_url, "bob")
    with _database(database_url) as database, _admin(database_url) as admin:
        async with _keyring(database) as keyring:
            for rpm in (1, 2, 3):
                admin.update(_id(alice), KeyChange(limits={"rpm": rpm}))
                await keyring.catch_up()
                assert keyring.get(_id(alice)).limits.rpm == rpm  # type: ignore[union-attr]
            # Two changes to one key and one to another between two looks: the latest of each.
            admin.update(_id(alice), KeyChange(limits={"rpm": 10}))
            admin.update(_id(bob), KeyChange(models=("llama3*",)))
            admin.update(_id(alice), KeyChange(limits={"tpm": 20}))
            await keyring.catch_up()
            changed_alice, changed_bob = keyring.get(_id(alice)), keyring.get(_id(bob))
            assert changed_alice is not None
            assert changed_bob is not None
            assert (changed_alice.limits.rpm, changed_alice.limits.tpm, changed_bob.models) == (10, 20, ("llama3*",))


async def test_a_new_key_works_and_a_revoked_one_stops(any_database_url: str) -> None:
    database_url = any_database_url
    old = issue_key(database_url, "old")
    with _database(database_url) as database, _admin(database_url) as admin:
        async with _keyring(database) as keyring:
            assert await _accepts(keyring, old)
            new = admin.create("new", KeyChange()).secret
            assert new is not None
            await keyring.catch_up()
            assert keyring.get(_id(new)) is not None  # in memory, not only found by the miss
            assert await _accepts(keyring, new)
            admin.revoke(_id(old))
            await keyring.catch_up()
            assert not await _accepts(keyring, old)
            assert await _accepts(keyring, new)


async def test_a_rotated_keys_old_secret_stops_working(any_database_url: str) -> None:
    database_url = any_database_url
    old = issue_key(database_url, "team")
    with _database(database_url) as database, _admin(database_url) as admin:
        async with _keyring(database) as keyring:
            assert await _accepts(keyring, old)
            rotated = admin.rotate(_id(old)).secret
            assert rotated is not None
            await keyring.catch_up()
            assert (await _accepts(keyring, old), await _accepts(keyring, rotated)) == (False, True)


async def test_a_change_notice_is_applied_through_the_same_read(any_database_url: str) -> None:
    database_url = any_database_url
    key = issue_key(database_url, "noticed")
    with _database(database_url) as database, _admin(database_url) as admin:
        async with _keyring(database) as keyring:
            notices = KeyNotices(keyring.catch_up)
            admin.revoke(_id(key))
            notices.notice(_id(key))
            await notices.drained()
            await notices.close()
            assert keyring.get(_id(key)).revoked  # type: ignore[union-attr]


async def test_a_key_deleted_by_hand_is_forgotten(database_url: str, tmp_path: Path) -> None:
    key = issue_key(database_url, "deleted")
    with _database(database_url) as database:
        async with _keyring(database) as keyring:
            assert keyring.get(_id(key)) is not None
            with sqlite3.connect(tmp_path / "gateway.db") as connection:
                connection.execute("DELETE FROM keys WHERE id = ?", (_id(key),))
            connection.close()
            await keyring.catch_up()
            assert keyring.get(_id(key)) is None


async def test_a_key_deleted_by_hand_on_postgresql_is_forgotten(postgres_url: str) -> None:
    key = issue_key(postgres_url, "deleted")
    with _database(postgres_url) as database:
        async with _keyring(database) as keyring:
            assert keyring.get(_id(key)) is not None
            database.run(lambda connection: connection.execute("DELETE FROM keys WHERE id = %s", (_id(key),)))
            await keyring.catch_up()
            assert keyring.get(_id(key)) is None


async def test_an_ollama_key_deleted_by_hand_stops_signing_at_the_next_look(any_database_url: str) -> None:
    public = OllamaKey(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([7]) * 32, "laptop")
    other = OllamaKey(public.blob[:-1] + b"\x08", "desktop")
    key = issue_key(any_database_url, "signer")
    with _admin(any_database_url) as admin:
        admin.update(_id(key), KeyChange(add_ollama_keys=(public.line,)))
    with _database(any_database_url) as database:
        async with _keyring(database) as keyring:
            assert keyring.owner_of(public.blob) is not None
            # By hand, as an operator might: no key row is written, yet the key has changed.
            database.run(lambda connection: connection.execute("DELETE FROM ollama_keys"))
            await keyring.catch_up()
            assert keyring.owner_of(public.blob) is None
            record = keyring.get(_id(key))
            assert record is not None
            assert record.ollama_keys == ()
            # And one added by hand signs at the next look.
            database.run(
                lambda connection: connection.execute(
                    "INSERT INTO ollama_keys (blob, key_id, comment, added_at) VALUES "
                    + ("(%s, %s, %s, 0)" if isinstance(database, PostgresDatabase) else "(?, ?, ?, 0)"),
                    (other.blob, _id(key), other.comment),
                )
            )
            await keyring.catch_up()
            owner = keyring.owner_of(other.blob)
            assert owner is not None
            assert owner.id == _id(key)


class _RacingDatabase(Database):
    """A database whose next read commits ``write`` (on another connection) just before its
    ``at``-th statement: a change committed while a look at the store is under way."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url)
        self.at = 0
        self.write: Callable[[], object] = lambda: None
        self.statements = 0  # in the last read

    def run(self, work: Callable[[sqlite3.Connection], T], *, busy: float | None = None) -> T:
        def traced(connection: sqlite3.Connection) -> T:
            self.statements = 0

            def statement(_: str) -> None:
                self.statements += 1
                if self.statements == self.at:
                    self.at = 0
                    self.write()

            connection.set_trace_callback(statement)
            try:
                return work(connection)
            finally:
                connection.set_trace_callback(None)

        return super().run(traced, busy=busy)


async def test_a_revocation_committed_during_a_read_is_seen_by_the_next(database_url: str) -> None:
    # Before each statement a read makes in turn: whichever order the read takes the counter and
    # the rows in, the change is in this read or the next, never lost.
    keys = [issue_key(database_url, f"key-{number}") for number in range(8)]
    database = _RacingDatabase(database_url)
    database.open()
    try:
        with _admin(database_url) as admin:
            async with _keyring(database) as keyring:
                await keyring.catch_up()
                statements = database.statements
                assert statements >= 3
                for position, key in zip(range(1, statements + 1), keys, strict=False):
                    database.at = position
                    database.write = partial(admin.revoke, _id(key))
                    await keyring.catch_up()
                    assert database.at == 0  # the write ran inside the read
                    await keyring.catch_up()
                    assert keyring.get(_id(key)).revoked, position  # type: ignore[union-attr]
    finally:
        database.close()


async def test_a_replaced_file_is_read_in_full(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    alice, bob = issue_key(database_url, "alice"), issue_key(database_url, "bob")
    backup = tmp_path / "backup.db"
    copy_database(path, backup)
    with _database(database_url) as database:
        async with _keyring(database) as keyring:
            carol = issue_key(database_url, "carol")
            await keyring.catch_up()
            assert keyring.get(_id(carol)) is not None
            # In the backup, bob is revoked: its counter reaches the same value the live file's
            # did, so only a full read tells the files apart.
            with _admin(f"sqlite:///{backup}") as other:
                other.revoke(_id(bob))
            os.replace(backup, path)
            await keyring.catch_up()
            assert (keyring.get(_id(carol)), await _accepts(keyring, bob), await _accepts(keyring, alice)) == (
                None,
                False,
                True,
            )


async def test_a_counter_that_went_back_is_read_in_full(database_url: str, tmp_path: Path) -> None:
    # A backup restored into the same file (SQLite's backup API): the same file, an older counter.
    path = tmp_path / "gateway.db"
    alice = issue_key(database_url, "alice")
    backup = tmp_path / "backup.db"
    copy_database(path, backup)
    with _database(database_url) as database:
        async with _keyring(database) as keyring:
            with _admin(database_url) as admin:
                admin.update(_id(alice), KeyChange(limits={"rpm": 1}))
                admin.update(_id(alice), KeyChange(limits={"rpm": 2}))
            await keyring.catch_up()
            with _admin(f"sqlite:///{backup}") as other:
                other.revoke(_id(alice))
            copy_database(backup, path)
            await keyring.catch_up()
            restored = keyring.get(_id(alice))
            assert restored is not None
            assert (restored.revoked, restored.limits.rpm) == (True, None)
