"""API keys in the embedded SQLite database.

Every operation on one key is a handful of indexed statements whatever the number of keys: a name
is unique by the table's index, a key is found by its id or name, and the keyring's change feed
reads the rows stamped since its cursor (the stamps are written by the triggers of migration 6 in
``database/sqlite.py``). Only ``load`` (a listing) and a full ``changes`` read every key.

The statements below are SQLite's, and PostgreSQL's too: its key store (``postgres.py``) runs the
same helpers on a connection that takes ``?`` placeholders (``Statements``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, TypeVar

from gateway.database.sqlite import Database, transaction
from gateway.keys import apikey
from gateway.keys.ollamakey import OllamaKey, fingerprint
from gateway.keys.store import (
    EVERY_KEY,
    LIMIT_NAMES,
    DuplicateKey,
    KeyChanges,
    KeyRecord,
    KeySearch,
    KeyStoreError,
    Limits,
    Scope,
    UnknownKey,
)

# Every column of a row, the limits last, each named as its limit (the schema itself is written
# out in database/sqlite.py's migrations: a new limit needs one adding its column).
_FIELDS = ("id", "name", "digest", "created_at", "last_used_at", "expires_at", "revoked", "scopes", "models")
_COLUMNS = ", ".join((*_FIELDS, *LIMIT_NAMES))
_INSERT = f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join('?' * (len(_FIELDS) + len(LIMIT_NAMES)))})"  # noqa: S608
# What a write to an existing key may change: its secret's digest and its policy.
_CHANGEABLE = ("digest", "expires_at", "revoked", "scopes", "models", *LIMIT_NAMES)
_UPDATE = f"UPDATE keys SET {', '.join(f'{column} = ?' for column in _CHANGEABLE)} WHERE id = ?"  # noqa: S608


T = TypeVar("T")


class Statements(Protocol):
    """What the helpers below need of a connection: SQL with ``?`` placeholders, run."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...


# Most keys share their scopes, models and limits (the defaults, or a team's policy): each distinct
# value is built once and shared, rather than held by every key (a frozenset alone is 216 bytes).
@lru_cache(maxsize=1024)
def _scopes(text: str) -> frozenset[Scope]:
    return frozenset(Scope(item) for item in json.loads(text))


@lru_cache(maxsize=1024)
def _models(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


@lru_cache(maxsize=1024)
def _limits(*values: int | None) -> Limits:
    return Limits(*values)


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
        scopes=_scopes(str(scopes)),
        models=_models(str(models)),
        limits=_limits(*row[len(_FIELDS) :]),
        ollama_keys=ollama_keys,
    )


def _ollama_keys(connection: Statements, where: str = "", *args: object) -> dict[str, tuple[OllamaKey, ...]]:
    """Each key's public keys, in the order they were added (of the keys ``where`` picks)."""
    rows = connection.execute(
        f"SELECT key_id, blob, comment FROM ollama_keys {where} ORDER BY added_at, rowid",  # noqa: S608
        args,
    ).fetchall()
    found: dict[str, list[OllamaKey]] = {}
    for owner, blob, comment in rows:
        found.setdefault(str(owner), []).append(OllamaKey(bytes(blob), str(comment)))
    return {owner: tuple(items) for owner, items in found.items()}


def _records(connection: Statements, where: str, *args: object) -> list[KeyRecord]:
    """The keys ``where`` picks (a clause on ``keys``), with their public keys."""
    public = _ollama_keys(connection, f"WHERE key_id IN (SELECT id FROM keys {where})", *args)  # noqa: S608
    rows = connection.execute(f"SELECT {_COLUMNS} FROM keys {where}", args)  # noqa: S608
    return [_record(row, public.get(str(row[0]), ())) for row in rows]


class _Dialect(NamedTuple):
    """How a backend says what a search needs."""

    like: str  # a LIKE whose letters match in either case
    items: str  # the rows of a JSON array column ``{column}``, each in a column ``value``
    fingerprint: str  # an Ollama key's fingerprint, of ``ollama_keys.blob``


# A LIMIT both backends read as "no limit" (SQLite has no LIMIT ALL, PostgreSQL no LIMIT -1).
_NO_LIMIT = 2**62
# The largest page whose public keys are looked up by its ids (as many parameters as keys).
_PAGE_LIMIT = 1000
# A key's status as describe() tells it (the one parameter: now).
_STATUS = (
    "CASE WHEN revoked <> 0 THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' "
    "ELSE 'active' END"
)


def _matching(search: KeySearch, now: float, dialect: _Dialect) -> tuple[str, list[object]]:
    """A clause on ``keys`` picking what ``search`` asks for, and its parameters, in ``dialect``."""
    like, items, fingerprints = dialect
    clauses: list[str] = []
    args: list[object] = []
    if search.status is not None:
        clauses.append(f"({_STATUS}) = ?")
        args += [now, search.status]
    found = f"{like} ? ESCAPE '\\'"
    ollama = (
        f"EXISTS (SELECT 1 FROM ollama_keys WHERE ollama_keys.key_id = keys.id"  # noqa: S608
        f" AND (comment {found} OR {fingerprints} {found}))"
    )
    item = f"EXISTS (SELECT 1 FROM {items} WHERE value {found})"  # noqa: S608
    scopes, models = item.format(column="scopes"), item.format(column="models")
    any_field = f"(name {found} OR id {found} OR {scopes} OR {models} OR ({_STATUS}) {found} OR {ollama})"
    for word in search.words:
        # The word as it is typed: its own % and _ match themselves.
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append(any_field)
        args += [pattern, pattern, pattern, pattern, now, pattern, pattern, pattern]
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _fingerprint_of(blob: object) -> str | None:
    # A value put in the column by hand may be anything: it has no fingerprint, and fails no search.
    return fingerprint(blob) if isinstance(blob, bytes) else None


def _page(connection: Statements, where: str, *args: object) -> list[KeyRecord]:
    """As ``_records``, for a page of keys: their public keys looked up by the page's ids, so that
    ``where`` (a search, a scan of every key) runs once."""
    rows = connection.execute(f"SELECT {_COLUMNS} FROM keys {where}", args).fetchall()  # noqa: S608
    ids = [str(row[0]) for row in rows]
    public = _ollama_keys(connection, f"WHERE key_id IN ({', '.join('?' * len(ids))})", *ids) if ids else {}
    return [_record(row, public.get(str(row[0]), ())) for row in rows]


def _one(connection: Statements, where: str, *args: object) -> KeyRecord | None:
    found = _records(connection, where, *args)
    return found[0] if found else None


def _write_ollama_keys(
    connection: Statements, key_id: str, before: tuple[OllamaKey, ...], after: tuple[OllamaKey, ...]
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
    def changes(self, cursor: Hashable | None) -> KeyChanges:
        """The keys written or deleted since ``cursor`` (see ``KeyStore``). The cursor is the file
        opened (a replaced file is a new generation) and the change counter as this read saw it."""

        def read(connection: sqlite3.Connection) -> KeyChanges:
            generation = self._database.generation
            # One snapshot for the counter and the rows: the counter first, so a row committed
            # once the read began carries a higher stamp than the cursor returned.
            connection.execute("BEGIN")
            try:
                counter = int(connection.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()[0])
                new_cursor = (generation, counter)
                if not isinstance(cursor, tuple) or cursor[0] != generation or cursor[1] > counter:
                    return KeyChanges(new_cursor, _records(connection, ""), full=True)
                since = cursor[1]
                removed = connection.execute("SELECT id FROM removed_keys WHERE change > ?", (since,))
                return KeyChanges(
                    new_cursor, _records(connection, "WHERE change > ?", since), [str(row[0]) for row in removed]
                )
            finally:
                if connection.in_transaction:  # (a failed read may have ended it)
                    connection.execute("COMMIT")

        return self._database.run(read)

    def load(self, search: KeySearch = EVERY_KEY, now: float | None = None) -> list[KeyRecord]:
        """The keys ``search`` picks, by name (the listings); ``now`` tells expired keys."""
        where, args = _matching(search, time.time() if now is None else now, self._dialect)
        read: Callable[..., list[KeyRecord]] = _records
        clause = f"{where} {self._by_name}"
        if search.limit is not None or search.offset:
            # By the name's index: a page costs the keys skipped, not the whole table sorted.
            clause += " LIMIT ? OFFSET ?"
            args += [_NO_LIMIT if search.limit is None else search.limit, search.offset]
            if search.limit is not None and search.limit <= _PAGE_LIMIT:
                read = _page
        return self._run(self._searching(lambda connection: read(connection, clause, *args)))

    def count(self, search: KeySearch = EVERY_KEY, now: float | None = None) -> int:
        """How many keys ``search`` picks, its page aside."""
        where, args = _matching(search, time.time() if now is None else now, self._dialect)
        return self._run(
            self._searching(
                lambda connection: int(connection.execute(f"SELECT COUNT(*) FROM keys {where}", args).fetchone()[0])  # noqa: S608
            )
        )

    def record_use(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        self._database.run(
            lambda connection: connection.executemany(
                # Only ever later (another replica may have written a later time), and a row whose
                # time stays is not written at all: a write that kept the time would count as a
                # change of the key (the trigger tells last use from a change by that column).
                "UPDATE keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                [(when, key_id, when) for key_id, when in last_used.items()],
            )
        )

    # Management side (the CLI and the admin API).
    def get(self, name: str) -> KeyRecord:
        record = self._run(lambda connection: _one(connection, "WHERE name = ?", name))
        if record is None:
            raise UnknownKey(f"no key named {name!r}")
        return record

    def by_id(self, key_id: str) -> KeyRecord:
        record = self._run(lambda connection: _one(connection, "WHERE id = ?", key_id))
        if record is None:
            raise UnknownKey(f"no key with id {key_id!r}")
        return record

    def owner_of(self, blob: bytes) -> KeyRecord | None:
        """The key an Ollama public key (its SSH blob) belongs to."""
        where = "WHERE id = (SELECT key_id FROM ollama_keys WHERE blob = ?)"
        return self._run(lambda connection: _one(connection, where, blob))

    # What differs on PostgreSQL (keys/postgres.py overrides these; changes, record_use, create
    # and modify too).
    _by_name = "ORDER BY name"
    # Letters match in either case: SQLite's LIKE folds ASCII letters (PostgreSQL's ILIKE, all).
    # Scopes and models are searched item by item, not as the JSON text they are kept as; an
    # Ollama key by its fingerprint (computed: the database keeps the key's bytes).
    _dialect = _Dialect("LIKE", "json_each(keys.{column})", "ollama_fingerprint(blob)")

    def _searching(self, work: Callable[[Statements], T]) -> Callable[[Statements], T]:
        """``work``, on a connection that knows ``ollama_fingerprint``."""

        def run(connection: Statements) -> T:
            assert isinstance(connection, sqlite3.Connection)
            connection.create_function("ollama_fingerprint", 1, _fingerprint_of, deterministic=True)
            return work(connection)

        return run

    def _run(self, work: Callable[[Statements], T]) -> T:
        """``work`` with a connection taking ``?`` placeholders."""
        return self._database.run(work)

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
                except sqlite3.IntegrityError as error:
                    if "keys.name" in str(error):
                        raise DuplicateKey(f"a key named {record.name!r} already exists") from None
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
                return _rewrite(connection, key_id, change)

        return self._database.run(rewrite)


def _rewrite(
    connection: Statements, key_id: str, change: Callable[[KeyRecord], KeyRecord]
) -> tuple[KeyRecord, KeyRecord]:
    """``modify``'s read, change and write, inside the caller's transaction."""
    before = _one(connection, "WHERE id = ?", key_id)
    if before is None:
        raise UnknownKey(f"no key with id {key_id!r}")
    after = replace(change(before), id=before.id, name=before.name, created_at=before.created_at)
    connection.execute(_UPDATE, (after.digest, *_row(after)[5:], after.id))
    if after.ollama_keys != before.ollama_keys:
        _write_ollama_keys(connection, key_id, before.ollama_keys, after.ollama_keys)
    return before, after


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
