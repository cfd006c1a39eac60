"""API keys in PostgreSQL, shared by every replica: the rows as in SQLite (same columns, same
records), and each change announced on ``KEYS_CHANNEL`` with the changed key's id, delivered to
every listening replica when the change commits. The change counter the keyring polls moves too:
polling is the fallback that heals a missed notice."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.keys import apikey
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.sqlite import _COLUMNS, _FIELDS, _record, _row
from gateway.keys.store import LIMIT_NAMES, KeyRecord, KeyStoreError, UnknownKey
from gateway.postgres import KEYS_CHANNEL, PostgresDatabase

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.Connection[Any]

_INSERT = f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join(['%s'] * (len(_FIELDS) + len(LIMIT_NAMES)))})"  # noqa: S608
_CHANGEABLE = ("digest", "expires_at", "revoked", "scopes", "models", *LIMIT_NAMES)
_UPDATE = f"UPDATE keys SET {', '.join(f'{column} = %s' for column in _CHANGEABLE)} WHERE id = %s"  # noqa: S608


def _ollama_keys(connection: Connection, key_id: str | None = None) -> dict[str, tuple[OllamaKey, ...]]:
    """Each key's public keys, in the order they were added (one key's, or everyone's)."""
    if key_id is None:
        rows = connection.execute("SELECT key_id, blob, comment FROM ollama_keys ORDER BY position").fetchall()
    else:
        rows = connection.execute(
            "SELECT key_id, blob, comment FROM ollama_keys WHERE key_id = %s ORDER BY position", (key_id,)
        ).fetchall()
    found: dict[str, list[OllamaKey]] = {}
    for owner, blob, comment in rows:
        found.setdefault(str(owner), []).append(OllamaKey(bytes(blob), str(comment)))
    return {owner: tuple(items) for owner, items in found.items()}


def _write_ollama_keys(
    connection: Connection, key_id: str, before: tuple[OllamaKey, ...], after: tuple[OllamaKey, ...]
) -> None:
    kept = {key.blob for key in after}
    for key in before:
        if key.blob not in kept:
            connection.execute("DELETE FROM ollama_keys WHERE blob = %s AND key_id = %s", (key.blob, key_id))
    had = {key.blob: key for key in before}
    for key in after:
        if key.blob in had and had[key.blob].comment == key.comment:
            continue
        owner = connection.execute(
            "SELECT keys.name FROM ollama_keys JOIN keys ON keys.id = ollama_keys.key_id "
            "WHERE ollama_keys.blob = %s AND ollama_keys.key_id != %s",
            (key.blob, key_id),
        ).fetchone()
        if owner is not None:
            raise KeyStoreError(f"the Ollama key {key.fingerprint} already belongs to the key {owner[0]!r}")
        connection.execute(
            "INSERT INTO ollama_keys (blob, key_id, comment, added_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (blob) DO UPDATE SET comment = excluded.comment",
            (key.blob, key_id, key.comment, time.time()),
        )


def _changed(connection: Connection, key_id: str) -> None:
    """Moves the counter the keyring polls, and tells every listening replica which key changed
    (sent when the transaction commits, never for one rolled back)."""
    connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
    connection.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, key_id))


class PostgresKeyStore:
    """Keys in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: PostgresDatabase, *, owned: bool = False) -> None:
        self._database = database
        self._owned = owned

    def close(self) -> None:
        if self._owned:
            self._database.close()

    # Read side (the server).
    def version(self) -> tuple[int, int]:
        def read(connection: Connection) -> tuple[int, int]:
            row = connection.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
            assert row is not None
            return self._database.generation, int(row[0])

        return self._database.run(read)

    def load(self) -> list[KeyRecord]:
        def read(connection: Connection) -> list[KeyRecord]:
            # One snapshot: keys and their public keys as of the same moment.
            with connection.transaction():
                connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = connection.execute(f'SELECT {_COLUMNS} FROM keys ORDER BY name COLLATE "C"').fetchall()  # noqa: S608
                public = _ollama_keys(connection)
            return [_record(row, public.get(str(row[0]), ())) for row in rows]

        return self._database.run(read)

    def record_use(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return

        ids, times = zip(*sorted(last_used.items()), strict=True)

        def write(connection: Connection) -> None:
            # One statement for the batch; only ever later (another replica may have written a
            # later time), and a row whose time stays is not written at all.
            connection.execute(
                "UPDATE keys SET last_used_at = used.at FROM unnest(%s::text[], %s::float8[]) AS used (id, at) "
                "WHERE keys.id = used.id AND (keys.last_used_at IS NULL OR keys.last_used_at < used.at)",
                (list(ids), list(times)),
            )

        self._database.run(write)

    # Management side (the CLI and the admin API).
    def get(self, name: str) -> KeyRecord:
        def read(connection: Connection) -> KeyRecord | None:
            row = connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = %s", (name,)).fetchone()  # noqa: S608
            return None if row is None else _record(row, _ollama_keys(connection, str(row[0])).get(str(row[0]), ()))

        record = self._database.run(read)
        if record is None:
            raise UnknownKey(f"no key named {name!r}")
        return record

    def create(self, record: KeyRecord) -> tuple[KeyRecord, str]:
        """Store a new key with ``record``'s policy; returns it and the secret (shown once)."""
        for _ in range(5):
            new = apikey.generate()
            stored = replace(record, id=new.key_id, digest=new.digest, created_at=time.time())

            def insert(connection: Connection, stored: KeyRecord = stored) -> bool:
                """False when the id drawn is taken (an id collision: draw again)."""
                with connection.transaction():
                    if connection.execute(_INSERT + " ON CONFLICT DO NOTHING RETURNING id", _row(stored)).fetchone():
                        _write_ollama_keys(connection, stored.id, (), stored.ollama_keys)
                        _changed(connection, stored.id)
                        return True
                    if connection.execute("SELECT 1 FROM keys WHERE name = %s", (stored.name,)).fetchone():
                        raise KeyStoreError(f"a key named {record.name!r} already exists")
                    return False

            if self._database.run(insert):
                return stored, new.secret
        raise KeyStoreError("could not allocate a key id")

    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> tuple[KeyRecord, KeyRecord]:
        """Read a key (its row locked), ``change`` it, write it back: one transaction, so a
        concurrent writer on any replica waits rather than has its change overwritten."""

        def rewrite(connection: Connection) -> tuple[KeyRecord, KeyRecord]:
            with connection.transaction():
                row = connection.execute(
                    f"SELECT {_COLUMNS} FROM keys WHERE id = %s FOR UPDATE",  # noqa: S608
                    (key_id,),
                ).fetchone()
                if row is None:
                    raise UnknownKey(f"no key with id {key_id!r}")
                before = _record(row, _ollama_keys(connection, key_id).get(key_id, ()))
                after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
                connection.execute(_UPDATE, (after.digest, *_row(after)[5:], after.id))
                if after.ollama_keys != before.ollama_keys:
                    _write_ollama_keys(connection, key_id, before.ollama_keys, after.ollama_keys)
                _changed(connection, key_id)
            return before, after

        return self._database.run(rewrite)
