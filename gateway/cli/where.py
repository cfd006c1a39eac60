"""Which database file a command uses, named on stderr every time.

The default URL is relative to the working directory, so a command run from another folder
would quietly open (and create) a second, empty database. Only ``keys create`` may create one,
and says so; every other command refuses where no file exists, and leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.database import sqlite_path


class NoDatabase(Exception):
    """The command reads or changes a database, and none is at the configured path."""


def database_file(database_url: str) -> Path:
    """The absolute path ``database_url`` names, from this working directory."""
    return Path(os.path.abspath(sqlite_path(database_url)))


def existing_database(database_url: str) -> Path:
    """The file, named on stderr; ``NoDatabase`` (nothing created) when it does not exist."""
    path = database_file(database_url)
    if not path.is_file():
        raise NoDatabase(
            f"no database at {path} (GATEWAY_DATABASE_URL={database_url}): run the command from the "
            "folder the gateway runs in, or set GATEWAY_DATABASE_URL to its database"
        )
    say_database(path)
    return path


def say_database(path: Path, *, created: bool = False) -> None:
    print(f"ollama-gateway: {'created a new database at' if created else 'database'} {path}", file=sys.stderr)
