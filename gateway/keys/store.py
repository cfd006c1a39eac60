"""Where API keys live: the server reads them (and records last use); the CLI and the admin API
manage them."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.keys.ollamakey import OllamaKey

if TYPE_CHECKING:
    from gateway.keys.sqlite import SqliteKeyStore

UNLIMITED = -1


class Scope(enum.Enum):
    INFERENCE = "inference"
    READ = "read"
    ADMIN = "admin"


DEFAULT_SCOPES = frozenset({Scope.INFERENCE, Scope.READ})


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; None = the gateway default, UNLIMITED = no limit."""

    rpm: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    concurrency: int | None = None
    # Share of the upstream when requests queue (requests per round-robin turn); None = 1.
    weight: int | None = None


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


def open_keystore(database_url: str) -> SqliteKeyStore:
    """A key store with a database of its own (the CLI's): closing the store closes it."""
    from gateway.database import CLI_BUSY_TIMEOUT, Database
    from gateway.keys.sqlite import SqliteKeyStore

    database = Database(database_url, busy_timeout=CLI_BUSY_TIMEOUT)
    database.open()
    return SqliteKeyStore(database, owned=True)
