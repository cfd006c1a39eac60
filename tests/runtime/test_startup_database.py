"""A database the gateway cannot use stops ``serve`` before it listens: one line on stderr naming
the path and the reason, and exit status 2 (a configuration error), never uvicorn's traceback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.database.sqlite import Database
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.timeout(60)


def _serve(database: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=f"sqlite:///{database}",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(free_port()),
        GATEWAY_UPSTREAM_URL="http://127.0.0.1:9",
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )


@contextlib.contextmanager
def _read_only(*paths: Path) -> Iterator[None]:
    """Paths nobody may write to, root included (the immutable flag), or the test is skipped."""
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = os.geteuid() == 0
    if immutable:
        done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("as root, a read-only file needs chattr +i, which this file system refused")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True, check=False)
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _gateway_database(path: Path) -> None:
    # A database a gateway made and closed (no log files left beside it): it opens and migrates
    # without writing, so only a real write finds it read-only.
    database = Database(f"sqlite:///{path}")
    database.open()
    database.close()
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["gateway.db"]


def _not_a_database(tmp: Path) -> tuple[Path, str]:
    path = tmp / "gateway.db"
    path.write_bytes(b"not SQLite at all\n" * 10)
    return path, "file is not a database"


def _under_a_file(tmp: Path) -> tuple[Path, str]:
    (tmp / "plain").write_text("a file, not a folder")
    return tmp / "plain" / "gateway.db", f"{tmp / 'plain'} is not a folder"


def _a_folder(tmp: Path) -> tuple[Path, str]:
    (tmp / "gateway.db").mkdir()
    return tmp / "gateway.db", "unable to open database file"


@pytest.mark.parametrize("case", [_not_a_database, _under_a_file, _a_folder])
def test_an_unusable_database_is_one_line_and_exit_2(tmp_path: Path, case: Callable[[Path], tuple[Path, str]]) -> None:
    path, reason = case(tmp_path)
    done = _serve(path)
    assert (done.returncode, done.stderr) == (2, f"ollama-gateway: cannot use the database {path}: {reason}\n")
    assert done.stdout == ""


def test_a_read_only_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gateway.db"
    _gateway_database(path)
    with _read_only(path):
        done = _serve(path)
    expected = f"ollama-gateway: cannot use the database {path}: attempt to write a readonly database"
    assert (done.returncode, done.stderr) == (2, expected + " (the file is read-only)\n")


def test_a_read_only_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with _read_only(folder):
        done = _serve(folder / "gateway.db")
    assert (done.returncode, done.stderr) == (
        2,
        f"ollama-gateway: cannot use the database {folder / 'gateway.db'}: unable to open database file "
        f"(its folder {folder} is read-only: SQLite keeps its log files beside the database)\n",
    )
