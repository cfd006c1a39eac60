"""``ollama-gateway keys …``: create, list, show, update, revoke and rotate API keys."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from gateway.keystore import DEFAULT_SCOPES, UNLIMITED, KeyRecord, Limits, Scope, open_keystore
from gateway.keystore.sqlite import SqliteKeyStore
from gateway.models import InvalidModelName, parse_pattern
from gateway.settings import Settings

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LIMITS = ("rpm", "tpm", "tpd", "concurrency", "weight")


def expiry(text: str) -> float | None:
    """``30d`` / ``12h`` (from now), ``2027-01-31`` (00:00 UTC), an ISO time, or ``never``."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if match:
        return dt.datetime.now(dt.UTC).timestamp() + int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30d, 12h) or a date (2027-01-31)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def limit(text: str) -> int | None:
    """A positive number, ``unlimited``, or ``default`` (the gateway-wide setting)."""
    if text == "unlimited":
        return UNLIMITED
    if text == "default":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a number, 'unlimited' or 'default'")


def weight(text: str) -> int | None:
    if text == "default":
        return None
    if text.isdigit() and 1 <= int(text) <= 100:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a weight from 1 to 100 or 'default'")


def pattern(text: str) -> str:
    try:
        parse_pattern(text)
    except InvalidModelName:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid model name or glob") from None
    return text


def add_policy_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument("--scope", action="append", choices=[scope.value for scope in Scope], dest="scopes")
    parser.add_argument("--admin", action="store_true", help="add the admin scope (pull, create, delete, …)")
    parser.add_argument("--model", action="append", type=pattern, dest="models", metavar="GLOB")
    if update:
        parser.add_argument("--all-models", action="store_true", help="remove every model restriction")
    for name in _LIMITS[:4]:
        parser.add_argument(f"--{name}", type=limit, default=argparse.SUPPRESS, metavar="N|unlimited|default")
    parser.add_argument(
        "--weight",
        type=weight,
        default=argparse.SUPPRESS,
        metavar="N|default",
        help="share of the upstream when queued",
    )
    parser.add_argument("--expires", type=expiry, default=argparse.SUPPRESS, metavar="30d|2027-01-31|never")


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print its secret (shown once)")
    create.add_argument("name")
    add_policy_options(create, update=False)
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_create)

    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    show = keys.add_parser("show", help="show one key")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    update = keys.add_parser("update", help="change a key's scopes, models, limits or expiry")
    update.add_argument("name")
    add_policy_options(update, update=True)
    update.add_argument("--json", action="store_true")
    update.set_defaults(handler=_update)

    revoke = keys.add_parser("revoke", help="revoke a key (it stops working within seconds)")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_revoke)

    rotate = keys.add_parser("rotate", help="issue a new secret for a key; the old one stops working")
    rotate.add_argument("name")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(handler=_rotate)


def _policy(args: argparse.Namespace, base: KeyRecord) -> KeyRecord:
    scopes = frozenset(Scope(value) for value in args.scopes) if args.scopes else base.scopes
    if args.admin:
        scopes |= {Scope.ADMIN}
    models = tuple(args.models) if args.models else base.models
    if getattr(args, "all_models", False):
        models = ()
    limits = Limits(**{name: getattr(args, name, getattr(base.limits, name)) for name in _LIMITS})
    expires = getattr(args, "expires", base.expires_at)
    return replace(base, scopes=scopes, models=models, limits=limits, expires_at=expires)


@contextmanager
def _store(settings: Settings) -> Iterator[SqliteKeyStore]:
    store = open_keystore(settings.database_url)
    try:
        yield store
    finally:
        store.close()


def _create(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        policy = _policy(args, KeyRecord(id="", name=args.name, digest="", created_at=0.0, scopes=DEFAULT_SCOPES))
        record, secret = store.create(policy)
    _print_secret(record, secret, args.json)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        records = store.load()
    if args.json:
        print(json.dumps([describe(record) for record in records], indent=2))
        return 0
    print(f"{'NAME':<20} {'ID':<8} {'STATUS':<8} {'SCOPES':<22} {'MODELS':<24} LAST USED")
    for record in records:
        info = describe(record)
        print(
            f"{record.name:<20} {record.id:<8} {info['status']:<8} {','.join(info['scopes']):<22} "
            f"{','.join(record.models) or '*':<24} {info['last_used_at'] or '-'}"
        )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        record = store.get(args.name)
    _print_record(record, args.json)
    return 0


def _update(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        record = store.update(_policy(args, store.get(args.name)))
    _print_record(record, args.json)
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        record = store.revoke(args.name)
    print(f"revoked {record.name} ({record.id})")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        record, secret = store.rotate(args.name)
    _print_secret(record, secret, args.json)
    return 0


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _limit_text(value: int | None) -> int | str:
    return "default" if value is None else "unlimited" if value == UNLIMITED else value


def describe(record: KeyRecord) -> dict[str, Any]:
    """A key's public description: everything but its digest (and never its secret)."""
    expired = record.expired(dt.datetime.now(dt.UTC).timestamp())
    return {
        "id": record.id,
        "name": record.name,
        "status": "revoked" if record.revoked else "expired" if expired else "active",
        "scopes": sorted(scope.value for scope in record.scopes),
        "models": list(record.models),
        "limits": {name: _limit_text(getattr(record.limits, name)) for name in _LIMITS},
        "created_at": _when(record.created_at),
        "expires_at": _when(record.expires_at),
        "last_used_at": _when(record.last_used_at),
    }


def _print_record(record: KeyRecord, as_json: bool) -> None:
    info = describe(record)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for field, value in info.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        if isinstance(value, dict):
            shown = ", ".join(f"{name}={item}" for name, item in value.items())
        print(f"{field + ':':<14}{shown if shown not in (None, '') else '-'}")


def _print_secret(record: KeyRecord, secret: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**describe(record), "key": secret}, indent=2))
        return
    print(secret)
    print(
        f"Key {record.name!r} ({record.id}). Store it now: it is not shown again.",
        file=sys.stderr,
    )
