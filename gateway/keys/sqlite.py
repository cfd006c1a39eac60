"""API keys in the embedded SQLite database."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from gateway.database import Database, transaction
from gateway.keys import apikey
from gateway.keys.ollamakey import OllamaKey
from gateway.keys.store import LIMIT_NAMES, KeyRecord, KeyStoreError, Limits, Scope, UnknownKey

# Every column of a row, the limits last, each named as its limit (the schema itself is written
# out in database.py's migrations: a new limit needs one adding its column).
_FIELDS = ("id", "name", "digest", "created_at", "last_used_at", "expires_at", "revoked", "scopes", "models")
_COLUMNS = ", ".join((*_FIELDS, *LIMIT_NAMES))
_INSERT = f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join('?' * (len(_FIELDS) + len(LIMIT_NAMES)))})"  # noqa: S608
# What a write to an existing key may change: its secret's digest and its policy.
_CHANGEABLE = ("digest", "expires_at", "revoked", "scopes", "models", *LIMIT_NAMES)
_UPDATE = f"UPDATE keys SET {', '.join(f'{column} = ?' for column in _CHANGEABLE)} WHERE id = ?"  # noqa: S608


def _record(row: tuple[object, ...], ollama_keys: tuple[OllamaKey, ...] = ()) -> KeyRecord:
    (key_id, name, digest, created, last_used, expires, revoked, scopes, models) = row[: len(_FIELDS)]
    return KeyRecord(
        id=str(key_id),
        name=str(name),
        digest=str(digest),
        created_at=float(created),  # type: ignore[arg-type]
        last_used_at=None if last_used is None else float(last_used),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        revoked=bool(revoked),
        scopes=frozenset(Scope(item) for item in json.loads(str(scopes))),
        models=tuple(json.loads(str(models))),
        limits=Limits(*row[len(_FIELDS) :]),  # type: ignore[arg-type]
        ollama_keys=ollama_keys,
    )


def _ollama_keys(connection: sqlite3.Connection, key_id: str | None = None) -> dict[str, tuple[OllamaKey, ...]]:
    """Each key's public keys, in the order they were added (one key's, or everyone's)."""
    query = "SELECT key_id, blob, comment FROM ollama_keys"
    rows = connection.execute(
        query + (" WHERE key_id = ? ORDER BY added_at, rowid" if key_id else " ORDER BY added_at, rowid"),
        (key_id,) if key_id else (),
    ).fetchall()
    found: dict[str, list[OllamaKey]] = {}
    for owner, blob, comment in rows:
        found.setdefault(str(owner), []).append(OllamaKey(bytes(blob), str(comment)))
    return {owner: tuple(items) for owner, items in found.items()}


def _write_ollama_keys(
    connection: sqlite3.Connection, key_id: str, before: tuple[OllamaKey, ...], after: tuple[OllamaKey, ...]
) -> None:
    kept = {key.blob for key in after}
    for key in before:
        if key.blob not in kept:
            connection.execute("DELETE FROM ollama_keys WHERE blob = ? AND key_id = ?", (key.blob, key_id))
    had = {key.blob: key for key in before}
    for key in after:
        if key.blob in had and had[key.blob].comment == key.comment:
            continue
        owner = connection.execute(
            "SELECT keys.name FROM ollama_keys JOIN keys ON keys.id = ollama_keys.key_id "
            "WHERE ollama_keys.blob = ? AND ollama_keys.key_id != ?",
            (key.blob, key_id),
        ).fetchone()
        if owner is not None:
            raise KeyStoreError(f"the Ollama key {key.fingerprint} already belongs to the key {owner[0]!r}")
        connection.execute(
            "INSERT INTO ollama_keys (blob, key_id, comment, added_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (blob) DO UPDATE SET comment = excluded.comment",
            (key.blob, key_id, key.comment, time.time()),
        )


class SqliteKeyStore:
    """Keys in ``database``; closes it on ``close`` only when ``owned`` (the CLI's own)."""

    def __init__(self, database: Database, *, owned: bool = False) -> None:
        self._database = database
        self._owned = owned

    def close(self) -> None:
        if self._owned:
            self._database.close()

    # Read side (the server).
    def version(self) -> tuple[int, int]:
        """The file opened (a replaced file is a new generation) and its change counter."""

        def read(connection: sqlite3.Connection) -> tuple[int, int]:
            row = connection.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
            return self._database.generation, int(row[0])

        return self._database.run(read)

    def load(self) -> list[KeyRecord]:
        def read(connection: sqlite3.Connection) -> list[KeyRecord]:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()  # noqa: S608
            public = _ollama_keys(connection)
            return [_record(row, public.get(str(row[0]), ())) for row in rows]

        return self._database.run(read)

    def record_use(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        self._database.run(
            lambda connection: connection.executemany(
                "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                [(when, key_id) for key_id, when in last_used.items()],
            )
        )

    # Management side (the CLI and the admin API).
    def get(self, name: str) -> KeyRecord:
        def read(connection: sqlite3.Connection) -> KeyRecord | None:
            row = connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()  # noqa: S608
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

            def insert(connection: sqlite3.Connection, stored: KeyRecord = stored) -> bool:
                """False when the id drawn is taken (the database would call it a failure)."""
                try:
                    with transaction(connection):
                        connection.execute(_INSERT, _row(stored))
                        _write_ollama_keys(connection, stored.id, (), stored.ollama_keys)
                        _changed(connection)
                except sqlite3.IntegrityError as error:
                    if "keys.name" in str(error):
                        raise KeyStoreError(f"a key named {record.name!r} already exists") from None
                    return False
                return True

            if self._database.run(insert):
                return stored, new.secret
            # An id collision: draw again.
        raise KeyStoreError("could not allocate a key id")

    def modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> tuple[KeyRecord, KeyRecord]:
        """Read a key, ``change`` it, write it back: one transaction, so a concurrent writer (another
        request, the CLI, another replica) waits rather than has its change overwritten. ``change``
        may raise to refuse (nothing is written). Returns the key before and after."""

        def rewrite(connection: sqlite3.Connection) -> tuple[KeyRecord, KeyRecord]:
            with transaction(connection):
                row = connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()  # noqa: S608
                if row is None:
                    raise UnknownKey(f"no key with id {key_id!r}")
                before = _record(row, _ollama_keys(connection, key_id).get(key_id, ()))
                after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
                connection.execute(_UPDATE, (after.digest, *_row(after)[5:], after.id))
                if after.ollama_keys != before.ollama_keys:
                    _write_ollama_keys(connection, key_id, before.ollama_keys, after.ollama_keys)
                _changed(connection)
            return before, after

        return self._database.run(rewrite)


def _changed(connection: sqlite3.Connection) -> None:
    # What the keyring polls: any change to any key moves it.
    connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")


def _row(record: KeyRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.name,
        record.digest,
        record.created_at,
        record.last_used_at,
        record.expires_at,
        int(record.revoked),
        json.dumps(sorted(scope.value for scope in record.scopes)),
        json.dumps(list(record.models)),
        *(getattr(record.limits, name) for name in LIMIT_NAMES),
    )
