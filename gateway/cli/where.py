"""Which database a command uses, named on stderr every time (a PostgreSQL URL with its
password masked).

The default URL is relative to the working directory, so a command run from another folder
would quietly open (and create) a second, empty database. Only ``keys create`` may create one,
and says so; every other command refuses where no file exists, and leaves nothing behind. A
PostgreSQL database is the operator's to create: the gateway only migrates it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.database.postgres import is_postgres, redacted
from gateway.database.sqlite import sqlite_path


class NoDatabase(Exception):
    """The command reads or changes a database, and none is at the configured path."""


def database_file(database_url: str) -> Path:
    """The absolute path ``database_url`` names, from this working directory."""
    return Path(os.path.abspath(sqlite_path(database_url)))


def existing_database(database_url: str) -> Path | str:
    """The file (or the PostgreSQL URL, masked), named on stderr; ``NoDatabase`` (nothing
    created) when no file exists."""
    if is_postgres(database_url):
        say_database(redacted(database_url))
        return redacted(database_url)
    path = database_file(database_url)
    if not path.is_file():
        raise NoDatabase(
            f"no database at {path} (GATEWAY_DATABASE_URL={database_url}): run the command from the "
            "folder the gateway runs in, or set GATEWAY_DATABASE_URL to its database"
        )
    say_database(path)
    return path


def say_database(path: Path | str, *, created: bool = False) -> None:
    print(f"ollama-gateway: {'created a new database at' if created else 'database'} {path}", file=sys.stderr)
