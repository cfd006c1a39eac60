"""Key management: the one implementation of every key operation, for the CLI and the admin API.

Both surfaces turn their input (argv, JSON) into text values and a ``KeyChange``; what a valid name,
limit, weight, expiry or model glob is, how a change applies to a key, and which error each failure
raises live only here. Secrets leave this module only as the return value of ``create`` and
``rotate``; ``describe`` never includes one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from gateway.errors import shown
from gateway.keys.apikey import generate
from gateway.keys.ollamakey import InvalidOllamaKey, OllamaKey
from gateway.keys.store import (
    DEFAULT_SCOPES,
    EVERY_KEY,
    LIMIT_KINDS,
    LIMIT_NAMES,
    UNLIMITED,
    DuplicateKey,
    KeyRecord,
    KeySearch,
    KeyStoreError,
    LimitKind,
    Limits,
    Scope,
    UnknownKey,
)
from gateway.ollama.models import InvalidModelName, parse_pattern

if TYPE_CHECKING:
    from gateway.keys.store import ManagedKeyStore

__all__ = ["DuplicateKey", "InvalidKeyRequest", "KeyAdmin", "KeyChange", "UnknownKey", "UnusableKey"]

NAME_LIMIT = 64
MODELS_LIMIT = 100  # globs per key
OLLAMA_KEYS_LIMIT = 20  # Ollama public keys per key (a person's machines)
SCOPES_LIMIT = 10  # scope names in one request (duplicates allowed)
# Limits are stored in SQLite INTEGER columns (signed 64-bit).
MAX_LIMIT: Final = 2**63 - 1
# Dates are shown as ISO text, which has four-digit years.
LATEST_EXPIRY: Final = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
_DURATION = re.compile(r"(\d{1,12})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidKeyRequest(KeyStoreError):
    """The input names an impossible value (a limit, an expiry, a glob, a name)."""


class UnusableKey(KeyStoreError):
    """The key is revoked (or expired, for a rotation): the operation could never take effect."""


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
    # Ollama public keys to attach (``ssh-ed25519 AAAA… comment`` lines) and to detach (lines or
    # ``SHA256:…`` fingerprints).
    add_ollama_keys: tuple[str, ...] = ()
    remove_ollama_keys: tuple[str, ...] = ()


def parse_expiry(text: str, now: float | None = None) -> float | None:
    """``30d`` / ``12h`` (from now), ``2027-01-31`` (00:00 UTC), an ISO time, or ``never``; in the
    future and no later than 9999-12-31 (every moment is built as a ``datetime``, so an overflow is
    caught here rather than when the key is shown)."""
    if text == "never":
        return None
    start = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    match = _DURATION.fullmatch(text)
    try:
        if match:
            moment = start + dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        else:
            date = _date(text)
            if date is None:
                raise InvalidKeyRequest(f"{shown(text)} is not a duration (30d, 12h) or a date (2027-01-31)")
            moment = date.astimezone(dt.UTC)
    except OverflowError:
        moment = dt.datetime.max.replace(tzinfo=dt.UTC)
    if moment > LATEST_EXPIRY:
        raise InvalidKeyRequest(f"{shown(text)} is after 9999-12-31")
    if moment <= start:
        raise InvalidKeyRequest(f"{shown(text)} is not in the future")
    return moment.timestamp()


def _date(text: str) -> dt.datetime | None:
    if len(text) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _number(text: str) -> int | None:
    # Bounded before int(): Python refuses to convert more than 4300 digits (a ValueError).
    if text.isascii() and text.isdigit() and len(text) <= len(str(MAX_LIMIT)):
        return int(text)
    return None


def parse_limit(text: str) -> int | None:
    """A number from 0 to ``MAX_LIMIT``, ``unlimited``, or ``default`` (the gateway-wide setting)."""
    if text == "unlimited":
        return UNLIMITED
    if text == "default":
        return None
    value = _number(text)
    if value is not None and value <= MAX_LIMIT:
        return value
    if text.isascii() and text.isdigit():
        raise InvalidKeyRequest(f"{shown(text)} is larger than the largest limit ({MAX_LIMIT})")
    raise InvalidKeyRequest(f"{shown(text)} is not a number, 'unlimited' or 'default'")


def parse_weight(text: str) -> int | None:
    if text == "default":
        return None
    value = _number(text)
    if value is not None and 1 <= value <= 100:
        return value
    raise InvalidKeyRequest(f"{shown(text)} is not a weight from 1 to 100 or 'default'")


def as_text(value: object) -> str:
    """A JSON value as the text the CLI would have been given (``60``, ``"60"`` -> ``60``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


# The rule for each kind of limit (a new limit of a known kind needs nothing here).
LIMIT_RULES: Final[dict[LimitKind, Callable[[str], int | None]]] = {
    LimitKind.QUOTA: parse_limit,
    LimitKind.WEIGHT: parse_weight,
}


def limit_rule(name: str) -> Callable[[str], int | None]:
    """What parses the limit called ``name``."""
    kind = LIMIT_KINDS.get(name)
    if kind is None:
        raise InvalidKeyRequest(f"{shown(name)} is not a limit (one of {', '.join(LIMIT_NAMES)})")
    return LIMIT_RULES[kind]


def parse_limit_named(name: str, text: str) -> int | None:
    return limit_rule(name)(text)


def check_pattern(text: str) -> str:
    try:
        parse_pattern(text)
    except InvalidModelName:
        raise InvalidKeyRequest(f"{shown(text)} is not a valid model name or glob") from None
    return text


def parse_scope(text: str) -> Scope:
    try:
        return Scope(text)
    except ValueError:
        choices = ", ".join(scope.value for scope in Scope)
        raise InvalidKeyRequest(f"{shown(text)} is not a scope (one of {choices})") from None


def parse_scopes(texts: Sequence[str]) -> frozenset[Scope]:
    """A key's exact scopes: at least one (an empty list is a mistake, not "the defaults")."""
    if len(texts) > SCOPES_LIMIT:
        raise InvalidKeyRequest(f"at most {SCOPES_LIMIT} scopes")
    scopes = frozenset(parse_scope(text) for text in texts)
    if not scopes:
        raise InvalidKeyRequest(_NO_SCOPE)
    return scopes


def check_models(texts: Sequence[str]) -> tuple[str, ...]:
    if len(texts) > MODELS_LIMIT:
        raise InvalidKeyRequest(f"a key has at most {MODELS_LIMIT} model globs")
    return tuple(check_pattern(text) for text in texts)


def parse_ollama_key(text: str) -> OllamaKey:
    try:
        return OllamaKey.from_line(text)
    except InvalidOllamaKey as error:
        raise InvalidKeyRequest(f"{shown(text)} is not an Ollama public key: {error}") from None


def _ollama_keys(change: KeyChange, base: KeyRecord) -> tuple[OllamaKey, ...]:
    keys = list(base.ollama_keys)
    for text in change.remove_ollama_keys:
        wanted = text.strip()
        if wanted.startswith("SHA256:"):
            matching = [key for key in keys if key.fingerprint == wanted]
        else:
            blob = parse_ollama_key(wanted).blob
            matching = [key for key in keys if key.blob == blob]
        if not matching:
            raise InvalidKeyRequest(f"the key {base.name!r} has no Ollama key {shown(wanted, 60)}")
        keys = [key for key in keys if key not in matching]
    for text in change.add_ollama_keys:
        added = parse_ollama_key(text)
        # Attaching a key again changes at most its comment.
        keys = [key for key in keys if key.blob != added.blob] + [added]
    if len(keys) > OLLAMA_KEYS_LIMIT:
        raise InvalidKeyRequest(f"a key has at most {OLLAMA_KEYS_LIMIT} Ollama keys")
    return tuple(keys)


# Words a keys search may have: each is a scan of every key.
SEARCH_WORDS = 8


def search_words(text: str) -> tuple[str, ...]:
    """The different words of a keys search, in order; refused past ``SEARCH_WORDS``."""
    words = tuple(dict.fromkeys(text.split()))
    if len(words) > SEARCH_WORDS:
        raise InvalidKeyRequest(f"at most {SEARCH_WORDS} different words")
    return words


def check_name(name: str) -> str:
    # Names appear in tables, logs and metrics labels: one printable line of sensible length.
    if not 1 <= len(name) <= NAME_LIMIT or name != name.strip() or not name.isprintable():
        raise InvalidKeyRequest(f"a key name is 1 to {NAME_LIMIT} printable characters without surrounding spaces")
    return name


_NO_SCOPE = "a key needs at least one scope (one of " + ", ".join(scope.value for scope in Scope) + ")"


def apply(change: KeyChange, base: KeyRecord) -> KeyRecord:
    """``base`` with ``change`` applied (nothing stored)."""
    scopes = base.scopes if change.scopes is None else change.scopes
    if change.admin:
        scopes |= {Scope.ADMIN}
    if not scopes:
        raise InvalidKeyRequest(_NO_SCOPE)
    models = base.models if change.models is None else check_models(change.models)
    unknown = set(change.limits) - set(LIMIT_NAMES)
    if unknown:
        raise InvalidKeyRequest(f"{shown(sorted(unknown)[0])} is not a limit (one of {', '.join(LIMIT_NAMES)})")
    limits = Limits(**{name: change.limits.get(name, getattr(base.limits, name)) for name in LIMIT_NAMES})
    expires = base.expires_at if isinstance(change.expires_at, _Keep) else change.expires_at
    return replace(
        base, scopes=scopes, models=models, limits=limits, expires_at=expires, ollama_keys=_ollama_keys(change, base)
    )


def changes(before: KeyRecord, after: KeyRecord) -> list[str]:
    """The names of the policy fields that differ (for the audit line: names only, never values)."""
    # Named as the API's and the CLI's inputs name them.
    fields = {
        "scopes": "scopes",
        "models": "models",
        "expires_at": "expires",
        "revoked": "revoked",
        "ollama_keys": "ollama_keys",
    }
    names = [label for name, label in fields.items() if getattr(before, name) != getattr(after, name)]
    names += [f"limits.{name}" for name in LIMIT_NAMES if getattr(before.limits, name) != getattr(after.limits, name)]
    if before.digest != after.digest:
        names.append("secret")
    return names


@dataclass(frozen=True, slots=True)
class Outcome:
    """A stored key after an operation, and which of its fields the operation changed."""

    record: KeyRecord
    changed: list[str]
    secret: str | None = None  # create and rotate only


class KeyAdmin:
    """Every key operation, on a store the caller opened (and closes).

    Writes to an existing key read it, check it and write it back in one store transaction, so two
    admins changing a key at once cannot undo each other's change (a limit edit putting back a
    scope that was just removed).
    """

    def __init__(self, store: ManagedKeyStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def create(self, name: str, change: KeyChange) -> Outcome:
        """A new key and its secret, which nothing else ever shows again."""
        check_name(name)
        base = KeyRecord(id="", name=name, digest="", created_at=0.0, scopes=DEFAULT_SCOPES)
        record = apply(change, base)
        # A name taken is refused by the store's unique index (DuplicateKey): no listing needed.
        stored, secret = self._store.create(record)
        return Outcome(stored, ["name", *changes(base, record)], secret)

    def frozen(self) -> KeyAdmin:
        """This, with its clock stopped now: a listing's search, statuses and count agree."""
        moment = self._clock()
        return KeyAdmin(self._store, lambda: moment)

    def list(self, search: KeySearch = EVERY_KEY) -> list[KeyRecord]:
        return self._store.load(search, self._clock())

    def count(self, search: KeySearch = EVERY_KEY) -> int:
        return self._store.count(search, self._clock())

    def get(self, name: str) -> KeyRecord:
        try:
            return self._store.get(name)
        except KeyStoreError:
            raise UnknownKey(f"no key named {name!r}") from None

    def by_id(self, key_id: str) -> KeyRecord:
        return self._store.by_id(key_id)

    def owner_of(self, public: OllamaKey) -> KeyRecord | None:
        """The key an Ollama public key belongs to."""
        return self._store.owner_of(public.blob)

    def update(self, key_id: str, change: KeyChange) -> Outcome:
        return self._modify(key_id, lambda record: apply(change, _unrevoked(record)))

    def detach_ollama_key(self, key_id: str, fingerprint: str) -> Outcome:
        """Self-service sign-out: the public key stops acting as this key (a revoked key too)."""

        def detached(record: KeyRecord) -> KeyRecord:
            return replace(record, ollama_keys=tuple(k for k in record.ollama_keys if k.fingerprint != fingerprint))

        return self._modify(key_id, detached)

    def revoke(self, key_id: str) -> Outcome:
        return self._modify(key_id, lambda record: replace(record, revoked=True))

    def rotate(self, key_id: str) -> Outcome:
        """A new secret for the same key id and policy; the old secret stops working."""
        new = generate(key_id)

        def rotated(record: KeyRecord) -> KeyRecord:
            # A secret that could never authenticate is not worth showing.
            if _unrevoked(record).expired(self._clock()):
                raise UnusableKey(f"key {record.name!r} has expired: give it a new expiry first")
            return replace(record, digest=new.digest)

        outcome = self._modify(key_id, rotated)
        return replace(outcome, secret=new.secret)

    def _modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> Outcome:
        before, after = self._store.modify(key_id, change)
        return Outcome(after, changes(before, after))

    def describe(self, record: KeyRecord) -> dict[str, Any]:
        return describe(record, self._clock())


def _unrevoked(record: KeyRecord) -> KeyRecord:
    """``record``, unless it is revoked: nothing but showing it makes sense then."""
    if record.revoked:
        raise UnusableKey(f"key {record.name!r} is revoked")
    return record


# The range ``datetime`` can show; a stored time outside it (written before expiries were checked,
# or by hand) is shown clamped, so one odd row never breaks a listing.
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC, microsecond=0)


def when(timestamp: float | None) -> str | None:
    if timestamp is None or math.isnan(timestamp):
        return None
    try:
        moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, ValueError, OSError):
        moment = _LATEST if timestamp > 0 else _EARLIEST
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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
        "ollama_keys": [{"fingerprint": key.fingerprint, "comment": key.comment} for key in record.ollama_keys],
    }
