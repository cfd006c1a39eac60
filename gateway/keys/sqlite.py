"""API keys in the embedded SQLite database."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from gateway.database import Database, transaction
from gateway.keys import apikey
from gateway.keys.store import LIMIT_NAMES, KeyRecord, KeyStoreError, Limits, Scope, UnknownKey

# Every column of a row, the limits last, each named as its limit (the schema itself is written
# out in database.py's migrations: a new limit needs one adding its column).
_FIELDS = ("id", "name", "digest", "created_at", "last_used_at", "expires_at", "revoked", "scopes", "models")
_COLUMNS = ", ".join((*_FIELDS, *LIMIT_NAMES))
_INSERT = f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join('?' * (len(_FIELDS) + len(LIMIT_NAMES)))})"  # noqa: S608
# What a write to an existing key may change: its secret's digest and its policy.
_CHANGEABLE = ("digest", "expires_at", "revoked", "scopes", "models", *LIMIT_NAMES)
_UPDATE = f"UPDATE keys SET {', '.join(f'{column} = ?' for column in _CHANGEABLE)} WHERE id = ?"  # noqa: S608


def _record(row: tuple[object, ...]) -> KeyRecord:
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
        rows = self._database.run(
            lambda connection: connection.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()  # noqa: S608
        )
        return [_record(row) for row in rows]

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
        row = self._database.run(
            lambda connection: connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()  # noqa: S608
        )
        if row is None:
            raise UnknownKey(f"no key named {name!r}")
        return _record(row)

    def create(self, record: KeyRecord) -> tuple[KeyRecord, str]:
        """Store a new key with ``record``'s policy; returns it and the secret (shown once)."""
        for _ in range(5):
            new = apikey.generate()
            stored = replace(record, id=new.key_id, digest=new.digest, created_at=time.time())

            def insert(connection: sqlite3.Connection, stored: KeyRecord = stored) -> None:
                with transaction(connection):
                    connection.execute(_INSERT, _row(stored))
                    _changed(connection)

            try:
                self._database.run(insert)
            except sqlite3.IntegrityError as error:
                if "keys.name" in str(error):
                    raise KeyStoreError(f"a key named {record.name!r} already exists") from None
                continue  # an id collision: draw again
            return stored, new.secret
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
                before = _record(row)
                after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
                connection.execute(_UPDATE, (after.digest, *_row(after)[5:], after.id))
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
