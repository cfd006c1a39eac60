"""API keys in PostgreSQL, shared by every replica: the rows as in SQLite (same columns, same
records, read and written by the same helpers of ``sqlite.py``), and the same change feed.

The change stamps and the change notices are the database's own (migration 6's triggers in
``database.py``): every write to a key, whoever makes it, moves the one counter row with
``UPDATE … RETURNING`` (its row lock held to commit, so stamps commit in their order) and
announces the key's id on ``KEYS_CHANNEL``, which PostgreSQL delivers to every listening replica
when, and only if, the transaction commits. Polling the feed stays the fallback."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.database.postgres import PostgresDatabase, Qmarks
from gateway.keys import apikey
from gateway.keys.sqlite import _INSERT, SqliteKeyStore, _Dialect, _records, _rewrite, _row, _write_ollama_keys
from gateway.keys.store import DuplicateKey, KeyChanges, KeyRecord, KeyStoreError

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.Connection[Any]

T = TypeVar("T")


class PostgresKeyStore(SqliteKeyStore):
    """Keys in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own). The
    reads by name, id and public key and the listing are the SQLite store's, run here."""

    def __init__(self, database: PostgresDatabase, *, owned: bool = False) -> None:
        self._postgres = database
        self._owned = owned

    def close(self) -> None:
        if self._owned:
            self._postgres.close()

    # Names in the order SQLite and Python give them (by code point).
    _by_name = 'ORDER BY name COLLATE "C"'
    _dialect = _Dialect(
        "ILIKE",
        "jsonb_array_elements_text(keys.{column}::jsonb) AS item(value)",
        "'SHA256:' || rtrim(encode(sha256(blob), 'base64'), '=')",
    )

    def _searching(self, work: Callable[[Any], T]) -> Callable[[Any], T]:
        return work  # its SQL says it all

    def _run(self, work: Callable[[Any], T]) -> T:
        return self._postgres.run(lambda connection: work(Qmarks(connection)))

    # Read side (the server).
    def changes(self, cursor: Hashable | None) -> KeyChanges:
        """The keys written or deleted since ``cursor`` (see ``KeyStore``): the counter and the rows
        stamped above the cursor, from one snapshot (REPEATABLE READ)."""

        def read(connection: Connection) -> KeyChanges:
            statements = Qmarks(connection)
            with connection.transaction():
                connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = connection.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
                assert row is not None
                counter = int(row[0])
                new_cursor = (self._postgres.generation, counter)
                if not isinstance(cursor, tuple) or cursor[0] != self._postgres.generation or cursor[1] > counter:
                    return KeyChanges(new_cursor, _records(statements, ""), full=True)
                since = cursor[1]
                removed = connection.execute("SELECT id FROM removed_keys WHERE change > %s", (since,)).fetchall()
                return KeyChanges(
                    new_cursor, _records(statements, "WHERE change > ?", since), [str(row[0]) for row in removed]
                )

        return self._postgres.run(read)

    def record_use(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        ids, times = zip(*sorted(last_used.items()), strict=True)
        # One statement for the batch; only ever later (another replica may have written a later
        # time), and a row whose time stays is not written at all (it would count as a change).
        self._postgres.run(
            lambda connection: connection.execute(
                "UPDATE keys SET last_used_at = used.at FROM unnest(%s::text[], %s::float8[]) AS used (id, at) "
                "WHERE keys.id = used.id AND (keys.last_used_at IS NULL OR keys.last_used_at < used.at)",
                (list(ids), list(times)),
            )
        )

    # Management side (the CLI and the admin API).
    def create(self, record: KeyRecord) -> tuple[KeyRecord, str]:
        """Store a new key with ``record``'s policy; returns it and the secret (shown once)."""
        for _ in range(5):
            new = apikey.generate()
            stored = replace(record, id=new.key_id, digest=new.digest, created_at=time.time())

            def insert(connection: Connection, stored: KeyRecord = stored) -> bool:
                """False when the id drawn is taken (an id collision: draw again)."""
                statements = Qmarks(connection)
                with connection.transaction():
                    if statements.execute(_INSERT + " ON CONFLICT DO NOTHING RETURNING id", _row(stored)).fetchone():
                        _write_ollama_keys(statements, stored.id, (), stored.ollama_keys)
                        return True
                    if connection.execute("SELECT 1 FROM keys WHERE name = %s", (stored.name,)).fetchone():
                        raise DuplicateKey(f"a key named {record.name!r} already exists")
                    return False

            if self._postgres.run(insert):
                return stored, new.secret
        raise KeyStoreError("could not allocate a key id")

    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> tuple[KeyRecord, KeyRecord]:
        """Read a key (its row locked), ``change`` it, write it back: one transaction, so a
        concurrent writer on any replica waits rather than has its change overwritten."""

        def rewrite(connection: Connection) -> tuple[KeyRecord, KeyRecord]:
            with connection.transaction():
                connection.execute("SELECT 1 FROM keys WHERE id = %s FOR UPDATE", (key_id,))
                return _rewrite(Qmarks(connection), key_id, change)

        return self._postgres.run(rewrite)
