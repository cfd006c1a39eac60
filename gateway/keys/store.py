"""Where API keys live: the server reads them (and records last use); the CLI and the admin API
manage them."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

from gateway.keys.ollamakey import OllamaKey

if TYPE_CHECKING:
    from gateway.keys.postgres import PostgresKeyStore
    from gateway.keys.sqlite import SqliteKeyStore

    # Either backend's store, as the management side (the CLI, the admin API) uses it.
    ManagedKeyStore: TypeAlias = SqliteKeyStore | PostgresKeyStore

UNLIMITED = -1


class Scope(enum.Enum):
    INFERENCE = "inference"
    READ = "read"
    ADMIN = "admin"


DEFAULT_SCOPES = frozenset({Scope.INFERENCE, Scope.READ})


class LimitKind(enum.Enum):
    # Enforced by the limiter (a field of ``policies.limits.Quota``, with a gateway-wide default
    # setting ``GATEWAY_DEFAULT_<NAME>``): a number from 0 (the key may not make requests),
    # UNLIMITED, or None for the default.
    QUOTA = "quota"
    # A share of a server's fair queue: 1 to 100, or None for 1.
    WEIGHT = "weight"


_QUOTA: Final = {"kind": LimitKind.QUOTA}
_WEIGHT: Final = {"kind": LimitKind.WEIGHT}


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; None = the gateway default, UNLIMITED = no limit.

    The one definition of the per-key limits, in their order: a field's name is its CLI option
    (``--rpm``), its key in the admin API's and ``keys show``'s ``limits``, and its column in the
    keys table, and its kind (``LIMIT_KINDS`` below) gives each surface the rest: which rule parses
    it, whether the limiter enforces it. Written by hand, and held to this list by
    tests/keys/test_limits.py: the column's migration (``database/sqlite.py``), a quota's enforcement
    and default setting (``policies/limits/``, ``settings.py``), the admin page's input.
    """

    rpm: int | None = field(default=None, metadata=_QUOTA)
    tpm: int | None = field(default=None, metadata=_QUOTA)
    tpd: int | None = field(default=None, metadata=_QUOTA)
    concurrency: int | None = field(default=None, metadata=_QUOTA)
    # Share of the upstream when requests queue (requests per round-robin turn); None = 1.
    weight: int | None = field(default=None, metadata=_WEIGHT)


LIMIT_KINDS: Final[dict[str, LimitKind]] = {limit.name: limit.metadata["kind"] for limit in fields(Limits)}
LIMIT_NAMES: Final = tuple(LIMIT_KINDS)
QUOTA_NAMES: Final = tuple(name for name, kind in LIMIT_KINDS.items() if kind is LimitKind.QUOTA)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    digest: str
    created_at: float
    scopes: frozenset[Scope] = DEFAULT_SCOPES
    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    expires_at: float | None = None
    revoked: bool = False
    last_used_at: float | None = None
    # Public keys whose signed requests act as this key (the ollama command's own credential).
    ollama_keys: tuple[OllamaKey, ...] = ()

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def usable(self, now: float) -> bool:
        """Whether the key may authenticate at ``now`` (the one rule the server and CLI share)."""
        return not self.revoked and not self.expired(now)


# What describe() calls a key: usable, past its expiry, or revoked.
KeyStatus: TypeAlias = Literal["active", "expired", "revoked"]


@dataclass(frozen=True, slots=True)
class KeySearch:
    """Which keys a listing shows, by name: those with every one of ``words`` somewhere in their
    name, id, status, scopes, models or an Ollama key's comment or fingerprint (letters in either
    case), and of ``status`` when given; of those, ``limit`` from ``offset`` (None: all)."""

    words: tuple[str, ...] = ()
    status: KeyStatus | None = None
    offset: int = 0
    limit: int | None = None


EVERY_KEY: Final = KeySearch()


class KeyStoreError(Exception):
    """A management operation failed (unknown name, duplicate name, ...)."""


class UnknownKey(KeyStoreError):
    """No key has that name (or id)."""


class DuplicateKey(KeyStoreError):
    """A key with that name exists already (the store's unique index says so)."""


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What changed in a store since a cursor (``KeyStore.changes``).

    ``full``: ``records`` is every key and replaces what the reader holds (a first read, a replaced
    store, a cursor the store cannot trust); otherwise ``records`` are the keys created or changed
    since the cursor (each as it is now, once) and ``removed`` the ids of keys deleted since it.
    ``cursor`` is opaque to the reader: it only ever hands it back to the same store.
    """

    cursor: Hashable
    records: Sequence[KeyRecord]
    removed: Sequence[str] = ()
    full: bool = False


class KeyStore(Protocol):
    """What the server's keyring needs from a store: a change feed, and a place for last-use times.

    The change feed's contract, for every backend:

    * ``changes(None)`` is a full read. ``changes(cursor)`` returns every key created, changed
      (secret, policy, revocation, Ollama keys) or removed after the read that returned ``cursor``,
      and no more than a constant amount of work besides: reading an unchanged store of any size
      costs one indexed look. Last-use times are not changes.
    * Nothing committed is ever skipped. A key's change is stamped with a number from one sequence
      that only grows, allocated while the write holds a lock it keeps until it commits (SQLite:
      the counter row updated inside ``BEGIN IMMEDIATE``; PostgreSQL: ``UPDATE ... RETURNING`` on
      one counter row, never a bare sequence, whose numbers commit out of order), so stamps commit
      in their order. A read takes the counter and the rows stamped above the cursor in one
      snapshot; the counter it saw is the new cursor, so a row committed during the read has a
      higher stamp and is in the next answer.
    * A cursor the store cannot vouch for (another database or file, a counter that went back:
      a restored backup) gets a full read (``full=True``), never a partial one.
    * The same key may come back in two answers in a row (a read may see rows stamped above the
      counter it took): applying a record is idempotent.

    Change notices (PostgreSQL's ``NOTIFY`` after commit, carrying the changed key ids) are hints
    on top of this: the keyring answers one with the same ``changes(cursor)`` read, and keeps
    polling, which heals a notice that was lost.
    """

    def changes(self, cursor: Hashable | None) -> KeyChanges: ...

    def record_use(self, last_used: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def open_keystore(database_url: str) -> ManagedKeyStore:
    """A key store with a database of its own (the CLI's): closing the store closes it."""
    from gateway.database import open_cli_database
    from gateway.database.sqlite import Database
    from gateway.keys.postgres import PostgresKeyStore
    from gateway.keys.sqlite import SqliteKeyStore

    database = open_cli_database(database_url)
    if isinstance(database, Database):
        return SqliteKeyStore(database, owned=True)
    return PostgresKeyStore(database, owned=True)
