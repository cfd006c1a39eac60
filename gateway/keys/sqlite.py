"""API keys in the embedded SQLite database."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from gateway.database import Database, transaction
from gateway.keys import apikey
from gateway.keys.store import KeyRecord, KeyStoreError, Limits, Scope, UnknownKey

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

            def insert(connection: sqlite3.Connection, stored: KeyRecord = stored) -> bool:
                """False when the id drawn is taken (the database would call it a failure)."""
                try:
                    with transaction(connection):
                        connection.execute(
                            f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                            _row(stored),
                        )
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
                before = _record(row)
                after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
                connection.execute(
                    "UPDATE keys SET digest = ?, expires_at = ?, revoked = ?, scopes = ?, models = ?, rpm = ?, "
                    "tpm = ?, tpd = ?, concurrency = ?, weight = ? WHERE id = ?",
                    (after.digest, *_row(after)[5:7], *_row(after)[7:], after.id),
                )
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
        record.limits.rpm,
        record.limits.tpm,
        record.limits.tpd,
        record.limits.concurrency,
        record.limits.weight,
    )
