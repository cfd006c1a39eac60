"""Key management: the one implementation of every key operation, for the CLI and the admin API.

Both surfaces turn their input (argv, JSON) into text values and a ``KeyChange``; what a valid name,
limit, weight, expiry or model glob is, how a change applies to a key, and which error each failure
raises live only here. Secrets leave this module only as the return value of ``create`` and
``rotate``; ``describe`` never includes one.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from gateway.keystore import DEFAULT_SCOPES, UNLIMITED, KeyRecord, KeyStoreError, Limits, Scope
from gateway.keystore.sqlite import SqliteKeyStore
from gateway.models import InvalidModelName, parse_pattern

LIMIT_NAMES: Final = ("rpm", "tpm", "tpd", "concurrency", "weight")
NAME_LIMIT = 64
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidKeyRequest(KeyStoreError):
    """The input names an impossible value (a limit, an expiry, a glob, a name)."""


class UnknownKey(KeyStoreError):
    """No key has that name (or id)."""


class DuplicateKey(KeyStoreError):
    """A key with that name exists already."""


class _Keep:
    """The expiry was not given: keep the key's own."""


KEEP: Final = _Keep()


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What a create or update asks for; ``None`` (or ``KEEP``) leaves that part as it is."""

    scopes: frozenset[Scope] | None = None
    admin: bool = False  # add the admin scope to whatever the scopes are
    models: tuple[str, ...] | None = None  # () lifts every model restriction
    limits: Mapping[str, int | None] = field(default_factory=dict)  # only the limits given
    expires_at: float | _Keep | None = KEEP


def parse_expiry(text: str, now: float | None = None) -> float | None:
    """``30d`` / ``12h`` (from now), ``2027-01-31`` (00:00 UTC), an ISO time, or ``never``."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if match:
        start = time.time() if now is None else now
        return start + int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidKeyRequest(f"{text!r} is not a duration (30d, 12h) or a date (2027-01-31)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_limit(text: str) -> int | None:
    """A positive number, ``unlimited``, or ``default`` (the gateway-wide setting)."""
    if text == "unlimited":
        return UNLIMITED
    if text == "default":
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    raise InvalidKeyRequest(f"{text!r} is not a number, 'unlimited' or 'default'")


def parse_weight(text: str) -> int | None:
    if text == "default":
        return None
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 100:
        return int(text)
    raise InvalidKeyRequest(f"{text!r} is not a weight from 1 to 100 or 'default'")


def parse_limit_named(name: str, text: str) -> int | None:
    if name == "weight":
        return parse_weight(text)
    if name in LIMIT_NAMES:
        return parse_limit(text)
    raise InvalidKeyRequest(f"{name!r} is not a limit (one of {', '.join(LIMIT_NAMES)})")


def check_pattern(text: str) -> str:
    try:
        parse_pattern(text)
    except InvalidModelName:
        raise InvalidKeyRequest(f"{text!r} is not a valid model name or glob") from None
    return text


def parse_scope(text: str) -> Scope:
    try:
        return Scope(text)
    except ValueError:
        choices = ", ".join(scope.value for scope in Scope)
        raise InvalidKeyRequest(f"{text!r} is not a scope (one of {choices})") from None


def check_name(name: str) -> str:
    # Names appear in tables, logs and metrics labels: one printable line of sensible length.
    if not 1 <= len(name) <= NAME_LIMIT or name != name.strip() or not name.isprintable():
        raise InvalidKeyRequest(f"a key name is 1 to {NAME_LIMIT} printable characters without surrounding spaces")
    return name


def apply(change: KeyChange, base: KeyRecord) -> KeyRecord:
    """``base`` with ``change`` applied (nothing stored)."""
    scopes = change.scopes if change.scopes else base.scopes
    if change.admin:
        scopes |= {Scope.ADMIN}
    models = base.models if change.models is None else tuple(check_pattern(item) for item in change.models)
    unknown = set(change.limits) - set(LIMIT_NAMES)
    if unknown:
        raise InvalidKeyRequest(f"{sorted(unknown)[0]!r} is not a limit (one of {', '.join(LIMIT_NAMES)})")
    limits = Limits(**{name: change.limits.get(name, getattr(base.limits, name)) for name in LIMIT_NAMES})
    expires = base.expires_at if isinstance(change.expires_at, _Keep) else change.expires_at
    return replace(base, scopes=scopes, models=models, limits=limits, expires_at=expires)


class KeyAdmin:
    """Every key operation, on a store the caller opened (and closes)."""

    def __init__(self, store: SqliteKeyStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def create(self, name: str, change: KeyChange) -> tuple[KeyRecord, str]:
        """A new key; returns it and its secret, which nothing else ever shows again."""
        check_name(name)
        base = KeyRecord(id="", name=name, digest="", created_at=0.0, scopes=DEFAULT_SCOPES)
        record = apply(change, base)
        if any(existing.name == name for existing in self._store.load()):
            raise DuplicateKey(f"a key named {name!r} already exists")
        return self._store.create(record)

    def list(self) -> list[KeyRecord]:
        return self._store.load()

    def get(self, name: str) -> KeyRecord:
        try:
            return self._store.get(name)
        except KeyStoreError:
            raise UnknownKey(f"no key named {name!r}") from None

    def by_id(self, key_id: str) -> KeyRecord:
        for record in self._store.load():
            if record.id == key_id:
                return record
        raise UnknownKey(f"no key with id {key_id!r}")

    def update(self, name: str, change: KeyChange) -> KeyRecord:
        return self._store.update(apply(change, self.get(name)))

    def revoke(self, name: str) -> KeyRecord:
        self.get(name)
        return self._store.revoke(name)

    def rotate(self, name: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key id and policy; the old secret stops working."""
        self.get(name)
        return self._store.rotate(name)

    def describe(self, record: KeyRecord) -> dict[str, Any]:
        return describe(record, self._clock())


def when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _limit_text(value: int | None) -> int | str:
    return "default" if value is None else "unlimited" if value == UNLIMITED else value


def describe(record: KeyRecord, now: float | None = None) -> dict[str, Any]:
    """A key's public description: everything but its digest (and never its secret)."""
    moment = time.time() if now is None else now
    return {
        "id": record.id,
        "name": record.name,
        "status": "revoked" if record.revoked else "expired" if record.expired(moment) else "active",
        "scopes": sorted(scope.value for scope in record.scopes),
        "models": list(record.models),
        "limits": {name: _limit_text(getattr(record.limits, name)) for name in LIMIT_NAMES},
        "created_at": when(record.created_at),
        "expires_at": when(record.expires_at),
        "last_used_at": when(record.last_used_at),
    }
