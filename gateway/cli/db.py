"""``ollama-gateway db copy --from URL --to URL``: one gateway database copied into another, to
move an install from SQLite to PostgreSQL (several replicas) or back, with no key issued again:
keys are copied with their digests, so every secret already handed out keeps working.

Both databases are migrated to this gateway's schema first (a PostgreSQL database must exist;
a SQLite target file is created). Run it again at any time: it writes only what differs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.where import existing_database, say_database
from gateway.database import describe, open_cli_database
from gateway.database.postgres import is_postgres
from gateway.database.transfer import copy_database
from gateway.settings import Settings


def add_commands(commands: Any) -> None:
    db = commands.add_parser(
        "db",
        help="copy a gateway database into another (SQLite to PostgreSQL, or back)",
        description="Database commands. GATEWAY_DATABASE_URL is not used: each names its databases.",
    )
    actions = db.add_subparsers(dest="action", required=True)
    copy = actions.add_parser(
        "copy",
        help="copy keys (digests only), Ollama public keys, usage and metadata into another database",
        description="Copy every key (its digest: the secrets stay with their owners and keep working), "
        "Ollama public key, usage row and the key change counter from one gateway database into "
        "another, migrating both to this gateway's schema first. Idempotent: a second run changes "
        "nothing. Rows only in the target are kept. Prints a count per table. To switch an install: "
        "stop the gateway (or let it run: a later run copies what changed meanwhile), copy, point "
        "GATEWAY_DATABASE_URL at the target, start the gateways, copy once more.",
        epilog="example: ollama-gateway db copy --from sqlite:////data/gateway.db "
        "--to postgresql://gateway:PASSWORD@db:5432/gateway",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help="sqlite:///<path> or postgresql://…")
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help="postgresql://… or sqlite:///<path>")
    copy.set_defaults(handler=_copy)


def _copy(args: argparse.Namespace, settings: Settings) -> int:
    if not is_postgres(args.source):
        # A mistyped path must not be created empty and copied as nothing.
        existing_database(args.source)
    source = open_cli_database(args.source)
    try:
        target = open_cli_database(args.target)
        try:
            if describe(source) == describe(target):
                print("ollama-gateway: error: --from and --to name the same database", file=sys.stderr)
                return 2
            say_database(describe(target))
            for copied in copy_database(source, target):
                print(f"{copied.table}: {copied.rows} read, {copied.changed} written")
        finally:
            target.close()
    finally:
        source.close()
    return 0
