"""``ollama-gateway keys …``: create, list, show, update, revoke and rotate API keys.

Only the command-line side lives here (arguments in, text out); the operations and their rules
are ``gateway.keys.management``'s, shared with the admin API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from gateway.cli.argument import argument
from gateway.cli.where import database_file, existing_database, say_database
from gateway.database.postgres import is_postgres, redacted
from gateway.keys.management import (
    KEEP,
    InvalidKeyRequest,
    KeyAdmin,
    KeyChange,
    Outcome,
    check_name,
    check_pattern,
    describe,
    limit_rule,
    parse_expiry,
    parse_ollama_key,
    parse_scope,
    parse_scopes,
    search_words,
)
from gateway.keys.store import (
    DEFAULT_SCOPES,
    LIMIT_KINDS,
    LIMIT_NAMES,
    KeyRecord,
    KeySearch,
    KeyStatus,
    LimitKind,
    Scope,
    open_keystore,
)
from gateway.settings import Settings

# How each kind of limit reads in --help (every limit gets an option: --rpm, --weight, ...).
_LIMIT_METAVARS = {LimitKind.QUOTA: "N|unlimited|default", LimitKind.WEIGHT: "N|default"}
# What each limit counts, with an example value; a limit not listed here is named by its option.
_LIMIT_MEANING = {
    "rpm": ("requests per minute", "60"),
    "tpm": ("tokens per minute", "100000"),
    "tpd": ("tokens per UTC day", "2000000"),
    "concurrency": ("requests in flight at once", "2"),
    "weight": ("share of the upstream when requests queue", "3"),
}
_KIND_TAIL = {
    LimitKind.QUOTA: "unlimited: no limit; default: the GATEWAY_DEFAULT_{upper} setting",
    LimitKind.WEIGHT: "default: 1",
}

_CREATE_EXAMPLES = [
    "alice",
    "ci --scope inference --model 'llama3.2*' --rpm 60 --expires 30d",
    "ops --admin --expires 2027-01-31 --json",
    "bob --ollama-key @~/.ollama/id_ed25519.pub",
]
_UPDATE_EXAMPLES = [
    "alice --rpm 120 --tpd unlimited",
    "ci --model qwen3 --model 'llama3.2*'",
    "ci --all-models --expires never",
    "bob --remove-ollama-key SHA256:…",
]


def _limit_help(name: str, kind: LimitKind) -> str:
    meaning, example = _LIMIT_MEANING.get(name, (name, "10"))
    return f"{meaning}; {_KIND_TAIL[kind].format(upper=name.upper())} (e.g. --{name} {example})"


def add_policy_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument(
        "--scope",
        action="append",
        type=argument(parse_scope, InvalidKeyRequest),
        dest="scopes",
        metavar="|".join(scope.value for scope in Scope),
        help="set the scopes exactly (repeat for several; e.g. --scope inference)",
    )
    parser.add_argument(
        "--admin", action="store_true", help="add the admin scope: pull, create, delete, … (e.g. --admin)"
    )
    parser.add_argument(
        "--model",
        action="append",
        type=argument(check_pattern, InvalidKeyRequest),
        dest="models",
        metavar="GLOB",
        help="allow only models matching this name or glob (repeat for several; without any: all models, "
        "shown as *; e.g. --model 'llama3.2*')",
    )
    if update:
        parser.add_argument(
            "--all-models", action="store_true", help="remove every model restriction (e.g. --all-models)"
        )
    for name, kind in LIMIT_KINDS.items():
        parser.add_argument(
            f"--{name}",
            type=argument(limit_rule(name), InvalidKeyRequest),
            default=argparse.SUPPRESS,
            metavar=_LIMIT_METAVARS[kind],
            help=_limit_help(name, kind),
        )
    parser.add_argument(
        "--expires",
        type=argument(parse_expiry, InvalidKeyRequest),
        default=argparse.SUPPRESS,
        metavar="30d|2027-01-31|never",
        help="when the key stops working: a time from now in s (seconds), m (minutes: 1m is one "
        "minute), h, d or w (weeks); a date (00:00 UTC) or ISO time; or never (e.g. --expires 30d)",
    )
    parser.add_argument(
        "--add-ollama-key" if update else "--ollama-key",
        action="append",
        type=argument(_ollama_key_line, InvalidKeyRequest),
        dest="add_ollama_keys",
        metavar="'ssh-ed25519 AAAA… comment'|@FILE.pub",
        help="let the ollama command's requests signed with this public key act as this key "
        "(OLLAMA_AUTH=1; the key is in ~/.ollama/id_ed25519.pub; repeat for several; "
        "e.g. --ollama-key @~/.ollama/id_ed25519.pub)",
    )
    if update:
        parser.add_argument(
            "--remove-ollama-key",
            action="append",
            dest="remove_ollama_keys",
            metavar="SHA256:…|LINE",
            help="detach an Ollama public key (its fingerprint, as keys show lists it, or its line; "
            "e.g. --remove-ollama-key SHA256:…)",
        )


def _ollama_key_line(text: str) -> str:
    """A public key line, given as is or as ``@path`` to an ``id_ed25519.pub`` file."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidKeyRequest(f"cannot read {text[1:]}: {getattr(error, 'strerror', None) or error}") from None
    parse_ollama_key(text)
    return text


_NAME = "the key's name, as keys list shows it (e.g. alice)"
_JSON = "print JSON instead of text (e.g. --json)"


def _command(keys: Any, name: str, help: str, examples: Sequence[str], **extra: str) -> argparse.ArgumentParser:
    """One ``keys`` subcommand, its help ending in examples of its use."""
    epilog = "examples:\n" + "\n".join(f"  ollama-gateway keys {name} {example}".rstrip() for example in examples)
    parser: argparse.ArgumentParser = keys.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **extra
    )
    return parser


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = _command(
        keys,
        "create",
        "create a key and print its secret (shown once)",
        _CREATE_EXAMPLES,
        description="Create a key and print its secret (shown once). Without options the key has "
        f"the scopes {', '.join(sorted(scope.value for scope in DEFAULT_SCOPES))}, every model, the "
        "default limits and no expiry.",
    )
    create.add_argument(
        "name", type=argument(check_name, InvalidKeyRequest), help="a unique name for the key (e.g. alice)"
    )
    add_policy_options(create, update=False)

    listing = _command(keys, "list", "list keys (never their secrets)", ["", "--json", "--find team --status active"])
    listing.add_argument(
        "--find",
        metavar="WORDS",
        type=argument(search_words, InvalidKeyRequest),
        default=(),
        help="only keys with every word in their name, id, status, scopes, models or an Ollama key's "
        "comment or fingerprint (letters in either case), as the admin page's filter (e.g. --find 'team qwen')",
    )
    listing.add_argument(
        "--status", choices=get_args(KeyStatus), help="only keys in this state (e.g. --status revoked)"
    )
    show = _command(keys, "show", "show one key", ["alice", "alice --json"])

    update = _command(
        keys,
        "update",
        "change a key's scopes, models, limits, expiry or Ollama keys",
        _UPDATE_EXAMPLES,
        description="Change what is given; everything else stays as it is.",
    )
    add_policy_options(update, update=True)
    revoke = _command(keys, "revoke", "revoke a key (it stops working within seconds)", ["alice"])
    rotate = _command(keys, "rotate", "issue a new secret for a key; the old one stops working", ["alice"])
    for parser in (show, update, revoke, rotate):
        parser.add_argument("name", help=_NAME)
    for action, parser in keys.choices.items():
        if action != "revoke":
            parser.add_argument("--json", action="store_true", help=_JSON)
        parser.set_defaults(handler=_HANDLERS[action])


def _change(args: argparse.Namespace) -> KeyChange:
    models = () if getattr(args, "all_models", False) else tuple(args.models) if args.models else None
    return KeyChange(
        scopes=parse_scopes([scope.value for scope in args.scopes]) if args.scopes else None,
        admin=args.admin,
        models=models,
        limits={name: getattr(args, name) for name in LIMIT_NAMES if hasattr(args, name)},
        expires_at=getattr(args, "expires", KEEP),
        add_ollama_keys=tuple(args.add_ollama_keys or ()),
        remove_ollama_keys=tuple(getattr(args, "remove_ollama_keys", None) or ()),
    )


@contextmanager
def _admin(settings: Settings, *, create: bool = False) -> Iterator[KeyAdmin]:
    path: Path | str
    if create and is_postgres(settings.database_url):
        path, new = redacted(settings.database_url), False
    elif create:
        path = database_file(settings.database_url)
        new = not path.exists()
    else:
        path, new = existing_database(settings.database_url), False
    store = open_keystore(settings.database_url)
    if create:
        say_database(path, created=new)
    try:
        yield KeyAdmin(store)
    finally:
        store.close()


def _create(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings, create=True) as admin:
        outcome = admin.create(args.name, _change(args))
    _print_secret(outcome, args.json)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings) as admin:
        records = admin.list(KeySearch(args.find, args.status))
    if args.json:
        print(json.dumps([describe(record) for record in records], indent=2))
        return 0
    print(f"{'NAME':<20} {'ID':<8} {'STATUS':<8} {'SCOPES':<22} {'MODELS':<24} {'EXPIRES':<20} LAST USED")
    for record in records:
        info = describe(record)
        print(
            f"{record.name:<20} {record.id:<8} {info['status']:<8} {','.join(info['scopes']):<22} "
            f"{_models(record.models):<24} {info['expires_at'] or 'never':<20} {info['last_used_at'] or '-'}"
        )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings) as admin:
        record = admin.get(args.name)
    _print_record(record, args.json)
    return 0


def _update(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings) as admin:
        record = admin.update(admin.get(args.name).id, _change(args)).record
    _print_record(record, args.json)
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings) as admin:
        record = admin.revoke(admin.get(args.name).id).record
    print(f"revoked {record.name} ({record.id})")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    with _admin(settings) as admin:
        outcome = admin.rotate(admin.get(args.name).id)
    _print_secret(outcome, args.json)
    return 0


_HANDLERS = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "revoke": _revoke,
    "rotate": _rotate,
}


def _print_record(record: KeyRecord, as_json: bool) -> None:
    info = describe(record)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for field, value in info.items():
        if field == "models":
            value = _models(value)
        elif field == "expires_at":
            value = value or "never"
        elif field == "ollama_keys":
            value = [f"{key['fingerprint']} {key['comment']}".strip() for key in value]
        shown = ", ".join(value) if isinstance(value, list) else value
        if isinstance(value, dict):
            shown = ", ".join(f"{name}={item}" for name, item in value.items())
        print(f"{field + ':':<14}{shown if shown not in (None, '') else '-'}")


def _models(models: Sequence[str]) -> str:
    """A key's models as both listings show them: ``*`` when it may use every model."""
    return ",".join(models) or "*"


def _print_secret(outcome: Outcome, as_json: bool) -> None:
    record = outcome.record
    if as_json:
        print(json.dumps({**describe(record), "key": outcome.secret}, indent=2))
        return
    print(outcome.secret)
    print(
        f"Key {record.name!r} ({record.id}). Store it now: it is not shown again.",
        file=sys.stderr,
    )
