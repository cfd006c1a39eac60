"""The gateway under test: ``python -m gateway serve`` as a child process, with every feature on.

"Every feature on" means: an API key created with the gateway's own CLI (when it has that
command) and sent on every request, generous limits configured, the access log at its normal
level. What was actually on is probed afterwards (features.py), never assumed.

Each gateway run gets a freshly started process (same settings, same key database), so runs do
not inherit each other's heap, pools or caches and memory growth belongs to the run that caused it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

from bench.children import Child
from bench.pinning import Pinning

ROOT = Path(__file__).resolve().parent.parent
READY = "Uvicorn running on"
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
DATABASE = "bench.db"

# Limits far above anything the benchmark sends: configured and checked, never reached.
KEY_LIMITS = ("--rpm", "10000000", "--tpm", "10000000000", "--tpd", "10000000000", "--concurrency", "100000")
KEY_OPTIONS = (("--admin", *KEY_LIMITS), ("--admin",), ())
LIMITS = {
    # Defaults for keys without limits of their own (names a gateway does not know are ignored).
    "GATEWAY_DEFAULT_RPM": "10000000",
    "GATEWAY_DEFAULT_TPM": "10000000000",
    "GATEWAY_DEFAULT_TPD": "10000000000",
    "GATEWAY_DEFAULT_CONCURRENCY": "100000",
    # The fair queue in front of the upstream stays on, but wider than any scenario: its default
    # (sized for a real Ollama's parallelism) would queue most of the benchmark's streams.
    "GATEWAY_UPSTREAM_CONCURRENCY": "100000",
}


def source_digest() -> str:
    """A fingerprint of the gateway code under test (its .py files), so reports can be matched to it."""
    digest = hashlib.sha256()
    package = ROOT / "gateway"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def python_path() -> str:
    """This checkout first, so children run the code under test."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _environment(upstream: Mapping[str, str], workdir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    # Our own GATEWAY_* settings only, so a stray variable in the caller's shell changes nothing.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env["PYTHONPATH"] = python_path()
    # As in a container: log lines leave at once, as they would for a log collector.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        {
            **upstream,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_LOG_LEVEL": "info",
            "GATEWAY_DATABASE_URL": f"sqlite:///{workdir / DATABASE}",
            "GATEWAY_SHUTDOWN_GRACE": "2",
            **LIMITS,
            **extra,
        }
    )
    return env


def _cli(env: Mapping[str, str], workdir: Path, *args: str, module: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(["-m", "gateway"] if module else []), *args],
        env=dict(env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def _commands(env: Mapping[str, str], workdir: Path) -> list[str]:
    """The gateway CLI's sub-commands, as its --help lists them."""
    found = re.search(r"\{([a-z,_-]+)\}", _cli(env, workdir, "--help").stdout)
    return found.group(1).split(",") if found else []


def _create_key(env: Mapping[str, str], workdir: Path) -> tuple[str | None, str]:
    """A key that may reach every route the benchmark uses (blobs need admin), with limits set.

    The richest form the CLI accepts wins; a CLI without those options (exit 2) gets a simpler one.
    """
    name = f"bench-{secrets.token_hex(4)}"
    for options in KEY_OPTIONS:
        done = _cli(env, workdir, "keys", "create", name, *options, "--json")
        if done.returncode == 0:
            break
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"no API key: `keys create` exited {done.returncode} ({reason[:160]})"
    try:
        created = json.loads(done.stdout)
        key = str(created["key"])
    except (ValueError, KeyError, TypeError):
        return None, "no API key: `keys create --json` printed no JSON object with a key"
    command = shlex.join(["keys", "create", name, *options])
    return key, f"API key {created.get('id', '?')} from `{command}`, sent as a Bearer token on every request"


class GatewayServer:
    """One gateway configuration; ``upstream`` is GATEWAY_UPSTREAM_URL or GATEWAY_UPSTREAMS.

    ``name`` names its process in the log, and its working directory (key database, output) under
    ``workdir``, so that several configurations can run side by side.
    """

    def __init__(
        self,
        upstream: Mapping[str, str],
        workdir: Path,
        pinning: Pinning,
        extra: Mapping[str, str],
        log: Path | None,
        name: str = "gateway",
        *,
        like: GatewayServer | None = None,
    ):
        self.name = name
        self._workdir = workdir / name
        self._workdir.mkdir(exist_ok=True)
        self._pinning = pinning
        self._log = log
        self._env = _environment(upstream, self._workdir, extra)
        if like is None:
            self.commands = _commands(self._env, self._workdir)
            self.version = _cli(self._env, self._workdir, "--version").stdout.strip()
            self.key, self.key_note = _create_key(self._env, self._workdir)  # the key is a secret: never reported
        else:
            # Another configuration of the same gateway: a copy of ``like``'s database (SQLite's
            # online backup: consistent while ``like`` runs), so the same key, without three more
            # CLI runs (a second each).
            with (
                closing(sqlite3.connect(like._workdir / DATABASE)) as source,
                closing(sqlite3.connect(self._workdir / DATABASE)) as copy,
            ):
                source.backup(copy)
            self.commands, self.version = like.commands, like.version
            self.key, self.key_note = like.key, like.key_note
        self._child: Child | None = None
        self.port = 0
        self.starts = 0

    @property
    def child(self) -> Child:
        if self._child is None:
            raise RuntimeError("the gateway is not running")
        return self._child

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def settings(self) -> dict[str, str]:
        """The GATEWAY_* variables it runs with (the port changes from start to start)."""
        return {name: value for name, value in self._env.items() if name.startswith("GATEWAY_")}

    def start(self) -> None:
        self.stop()
        self.port = free_port()
        env = {**self._env, "GATEWAY_PORT": str(self.port)}
        argv = [*self._pinning.prefix(self._pinning.gateway_cpu), sys.executable, "-m", "gateway", "serve"]
        self.starts += 1
        self._child = Child(self.name, argv, env, self._workdir, self._log)
        self._child.wait_for(READY, START_TIMEOUT)

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    @property
    def running(self) -> bool:
        return self._child is not None

    def package(self) -> str:
        """Where its ``gateway`` package is imported from: the code under test, not an install."""
        done = _cli(self._env, self._workdir, "-c", "import gateway; print(gateway.__file__)", module=False)
        return str(Path(done.stdout.strip()).parent) if done.returncode == 0 else f"unknown (exit {done.returncode})"


@contextmanager
def running_gateway(
    upstream: Mapping[str, str],
    workdir: Path,
    pinning: Pinning,
    extra: Mapping[str, str],
    log: Path | None,
    name: str = "gateway",
    like: GatewayServer | None = None,
) -> Iterator[GatewayServer]:
    server = GatewayServer(upstream, workdir, pinning, extra, log, name, like=like)
    try:
        server.start()
        yield server
    finally:
        server.stop()
