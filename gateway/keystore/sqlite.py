"""API keys in the embedded SQLite database."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from gateway import keys
from gateway.database import connect
from gateway.keystore import KeyRecord, KeyStoreError, Limits, Scope, UnknownKey

_COLUMNS = (
    "id, name, digest, created_at, last_used_at, expires_at, revoked, scopes, models, "
    "rpm, tpm, tpd, concurrency, weight"
)


def _record(row: tuple[object, ...]) -> KeyRecord:
    (key_id, name, digest, created, last_used, expires, revoked, scopes, models, rpm, tpm, tpd, concurrency, weight) = (
        row
    )
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
        limits=Limits(rpm, tpm, tpd, concurrency, weight),  # type: ignore[arg-type]
    )


class SqliteKeyStore:
    def __init__(self, database_url: str) -> None:
        self._connection = connect(database_url)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._connection.close()

    # Read side (the server).
    def version(self) -> int:
        with self._lock:
            row = self._connection.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
        return int(row[0])

    def load(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._connection.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()  # noqa: S608
        return [_record(row) for row in rows]

    def record_use(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        with self._lock:
            self._connection.executemany(
                "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                [(when, key_id) for key_id, when in last_used.items()],
            )

    # Management side (the CLI).
    def get(self, name: str) -> KeyRecord:
        with self._lock:
            row = self._connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()  # noqa: S608
        if row is None:
            raise UnknownKey(f"no key named {name!r}")
        return _record(row)

    def create(self, record: KeyRecord) -> tuple[KeyRecord, str]:
        """Store a new key with ``record``'s policy; returns it and the secret (shown once)."""
        for _ in range(5):
            new = keys.generate()
            stored = replace(record, id=new.key_id, digest=new.digest, created_at=time.time())
            try:
                self._write(
                    f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    _row(stored),
                )
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
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                row = self._connection.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()  # noqa: S608
                if row is None:
                    raise UnknownKey(f"no key with id {key_id!r}")
                before = _record(row)
                after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
                self._connection.execute(
                    "UPDATE keys SET digest = ?, expires_at = ?, revoked = ?, scopes = ?, models = ?, rpm = ?, "
                    "tpm = ?, tpd = ?, concurrency = ?, weight = ? WHERE id = ?",
                    (after.digest, *_row(after)[5:7], *_row(after)[7:], after.id),
                )
                self._connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        return before, after

    def _write(self, statement: str, parameters: tuple[object, ...]) -> None:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.execute(statement, parameters)
                self._connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise


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
        record.limits.rpm,
        record.limits.tpm,
        record.limits.tpd,
        record.limits.concurrency,
        record.limits.weight,
    )
