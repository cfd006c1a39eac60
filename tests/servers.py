"""Real servers for tests: the gateway under uvicorn in a thread, or as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.routes.dispatch import Gateway
from gateway.runtime.http_protocol import GatewayHttpProtocol
from gateway.settings import Settings
from tests.quickserver import QuickServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0


@dataclass
class RunningGateway:
    url: str
    app: Gateway
    server: uvicorn.Server
    key: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def gateway_thread(settings: Settings, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> Iterator[RunningGateway]:
    """The gateway app served by uvicorn (its protocol as in production) on a free loopback port;
    ``wrap``: an ASGI middleware to serve it through."""
    app = create_app(settings)
    config = uvicorn.Config(
        app if wrap is None else wrap(app),
        host="127.0.0.1",
        port=0,
        http=GatewayHttpProtocol,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
    server = QuickServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    # A start-up that fails ends the thread without a word: stop waiting then.
    while not server.ready.wait(0.05) and thread.is_alive() and time.monotonic() < deadline:
        pass
    if not server.started:
        server.stop()
        thread.join(timeout=10)
        raise RuntimeError("gateway did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.stop()
        thread.join(timeout=10)


def stop_process(process: subprocess.Popen[Any], timeout: float = 15, *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) a child this test started, by its PID; escalate if it will not go."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Drain(threading.Thread):
    """Reads a pipe to the end so the child never blocks on a full pipe; signals a marker line."""

    def __init__(self, stream: IO[str], marker: str | None) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.marker = marker
        self.lines: list[str] = []
        self.seen = threading.Event()
        self._arrived = threading.Condition()

    def run(self) -> None:
        for line in self.stream:
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()
            if self.marker is not None and self.marker in line:
                self.seen.set()
        self.seen.set()  # end of stream: stop anyone waiting
        with self._arrived:
            self._arrived.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first line containing ``text``, once it has arrived (the stream must not end first)."""
        with self._arrived:
            self._arrived.wait_for(lambda: any(text in line for line in self.lines) or not self.is_alive(), timeout)
            matching = [line for line in self.lines if text in line]
        assert matching, f"no line with {text!r} in:\n" + "".join(self.lines)
        return matching[0]


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[str]
    stdout: _Drain
    stderr: _Drain

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        self.stdout.join(timeout=5)
        self.stderr.join(timeout=5)
        return code


@contextmanager
def gateway_process(
    env: Mapping[str, str],
    args: tuple[str, ...] = ("serve",),
    cwd: Path | None = None,
    *,
    program: Sequence[str] = (sys.executable, "-m", "gateway"),
    inherit: bool = True,
) -> Iterator[GatewayProcess]:
    """``python -m gateway serve`` as its own process; ready once uvicorn says it is running.

    Another ``program`` with ``inherit=False`` runs an installed gateway with ``env`` alone, as a
    container or a unit starts it (``program[0]`` is looked up on that environment's PATH)."""
    port = free_port()
    full_env = {
        **(os.environ if inherit else {}),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "info",
        **env,
    }
    process = subprocess.Popen(
        [*program, *args],
        env=full_env,
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = _Drain(process.stdout, None), _Drain(process.stderr, "Uvicorn running on")
    out.start()
    err.start()
    try:
        if not err.seen.wait(START_TIMEOUT) or process.poll() is not None:
            raise RuntimeError("gateway process did not start:\n" + "".join(err.lines))
        if full_env["GATEWAY_LOG_LEVEL"].lower() in ("info", "debug"):
            # Its start-up check of the upstream is over: it cannot land among the test's requests.
            err.wait_for("forwarding to", START_TIMEOUT)
        yield GatewayProcess(f"http://127.0.0.1:{port}", process, out, err)
    finally:
        stop_process(process)
        out.join(timeout=5)
        err.join(timeout=5)
        process.stdout.close()
        process.stderr.close()


def raw_post(url: str, path: str, body: bytes, headers: Mapping[str, str]) -> socket.socket:
    """A POST over a plain socket, so a test can hang up at exactly the moment it wants."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = "".join(f"{name}: {value}\r\n" for name, value in {**headers, "Content-Length": str(len(body))}.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gw\r\n{head}\r\n".encode() + body)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    """Receive until ``marker`` has arrived ``count`` times; the response must not end first."""
    received = b""
    while received.count(marker) < count:
        data = sock.recv(65536)
        assert data, "the response ended early"
        received += data
    return received
