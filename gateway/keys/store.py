"""Where API keys live: the server reads them (and records last use); the CLI and the admin API
manage them."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

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
    tests/keys/test_limits.py: the column's migration (``database.py``), a quota's enforcement
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


class KeyStoreError(Exception):
    """A management operation failed (unknown name, duplicate name, ...)."""


class UnknownKey(KeyStoreError):
    """No key has that name (or id)."""


class KeyStore(Protocol):
    def version(self) -> Hashable:
        """Changes whenever a key is created, changed, revoked or rotated, or the store itself is
        replaced (compared for equality only)."""

    def load(self) -> list[KeyRecord]: ...

    def record_use(self, last_used: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def open_keystore(database_url: str) -> ManagedKeyStore:
    """A key store with a database of its own (the CLI's): closing the store closes it."""
    from gateway.database import Database
    from gateway.databases import open_cli_database
    from gateway.keys.postgres import PostgresKeyStore
    from gateway.keys.sqlite import SqliteKeyStore

    database = open_cli_database(database_url)
    if isinstance(database, Database):
        return SqliteKeyStore(database, owned=True)
    return PostgresKeyStore(database, owned=True)
