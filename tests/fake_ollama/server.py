"""FakeOllama: the fake served by uvicorn on 127.0.0.1, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.quickserver import QuickServer

from .app import FakeApp
from .behaviour import Behaviour
from .catalog import DEFAULT_MODELS, EXTRA_REGISTRY, Catalog
from .exchange import Transports
from .manage import VERSION
from .names import parse_name
from .records import RecordedRequest, RequestLog

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def go_header_name(name: bytes) -> bytes:
    """Go's textproto.CanonicalMIMEHeaderKey: ``content-type`` -> ``Content-Type``."""
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


class _GoWire:
    """The connection's transport, writing response heads with Go's canonical header names.

    uvicorn lower-cases every header name it writes; Go's net/http writes ``Content-Type``,
    ``Transfer-Encoding``, ``Date``. A gateway that looks headers up by exact lower-case name
    would pass against uvicorn and fail against the real server, so the fake writes them as Go does.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.expect_head = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.expect_head and bytes(data[:7]) == b"HTTP/1.":
            self.expect_head = False
            head, separator, rest = bytes(data).partition(b"\r\n\r\n")
            status, *fields = head.split(b"\r\n")
            renamed = [go_header_name(name) + b":" + value for name, _, value in (f.partition(b":") for f in fields)]
            data = b"\r\n".join([status, *renamed]) + separator + rest
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol(transports: Transports) -> type[asyncio.Protocol]:
    """uvicorn's protocol, remembering each connection's transport so the fake can cut it."""

    class Protocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._wire = _GoWire(transport)
            super().connection_made(self._wire)  # type: ignore[arg-type]
            if self.client is not None:
                transports[self.client] = transport

        def on_message_begin(self) -> None:
            self._wire.expect_head = True
            super().on_message_begin()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                transports.pop(self.client, None)
            super().connection_lost(exc)

    return Protocol


class FakeOllama:
    """A faithful fake Ollama on a free loopback port.

    Every public method may be called from any thread. Use it as a context manager or
    call `start()` and `stop()`.
    """

    def __init__(
        self,
        models: Iterable[str] | None = None,
        *,
        registry: Iterable[str] | None = None,
        version: str = VERSION,
        port: int = 0,
    ) -> None:
        installed = list(DEFAULT_MODELS if models is None else models)
        pullable = [*installed, *(EXTRA_REGISTRY if registry is None else registry)]
        self._catalog = Catalog(installed, pullable, version)
        self._log = RequestLog()
        self._lock = threading.Lock()
        self._behaviour = Behaviour()
        self._server: QuickServer | None = None
        self._app: FakeApp | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._wanted_port = port  # 0: any free one; a fixed one lets a test restart a "server"

    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the fake is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._wanted_port))
        self._port = listener.getsockname()[1]
        app = FakeApp(self._catalog, self._log, lambda: self.behaviour)
        config = uvicorn.Config(
            app,
            http=_protocol(app.transports),
            lifespan="off",
            log_level="warning",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # scope["client"] must stay the real peer
            server_header=False,  # Ollama sends no Server header
            timeout_graceful_shutdown=2,
        )
        server = QuickServer(config)
        thread = threading.Thread(target=_serve, args=(server, listener), name=f"fake-ollama:{self._port}", daemon=True)
        self._server, self._app, self._thread = server, app, thread
        thread.start()
        server.ready.wait(_START_TIMEOUT)
        if not server.started:
            self.stop()
            raise RuntimeError("the fake Ollama did not start")

    def stop(self) -> None:
        server, app, thread = self._server, self._app, self._thread
        if server is None or app is None or thread is None:
            return
        if server.loop is not None and not server.loop.is_closed():
            # the loop may close in between
            with contextlib.suppress(RuntimeError):
                server.loop.call_soon_threadsafe(app.stop_all)
        server.stop()
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        self._server = self._app = self._thread = None

    def __enter__(self) -> FakeOllama:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        if self._port is None or self._thread is None:
            raise RuntimeError("the fake is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # knobs

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    @behaviour.setter
    def behaviour(self, value: Behaviour) -> None:
        with self._lock:
            self._behaviour = value

    def configure(self, **changes: object) -> Behaviour:
        """Replace the behaviour with a copy that has `changes` applied."""
        with self._lock:
            self._behaviour = dataclasses.replace(self._behaviour, **changes)  # type: ignore[arg-type]
            return self._behaviour

    def reset(self) -> None:
        """Default behaviour, the initial models, no blobs, nothing loaded, no records."""
        with self._lock:
            self._behaviour = Behaviour()
        self._catalog.reset()
        self._log.clear()

    # state

    @property
    def models(self) -> list[str]:
        """Installed models, as /api/tags names them."""
        return [m.display for m in self._catalog.installed()]

    @models.setter
    def models(self, names: Iterable[str]) -> None:
        self._catalog.set_installed(names)

    def load(self, name: str) -> None:
        """Hold an installed model in memory (/api/ps lists it), as a request for it would."""
        parsed = parse_name(name)
        model = self._catalog.find(parsed) if parsed is not None else None
        if model is None:
            raise ValueError(f"{name!r} is not installed")
        self._catalog.load(model, None)

    def add_model(self, name: str) -> None:
        parsed = parse_name(name)
        if parsed is None:
            raise ValueError(f"invalid model name {name!r}")
        self._catalog.install(parsed)

    @property
    def loaded(self) -> list[str]:
        """Models /api/ps reports as running."""
        return [model.display for model, _ in self._catalog.loaded()]

    @property
    def blobs(self) -> frozenset[str]:
        """Digests present, as `sha256:<hex>`."""
        return self._catalog.blobs()

    def add_blob(self, digest: str) -> None:
        self._catalog.add_blob("sha256:" + digest[7:])

    # records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        return self._log.snapshot()

    def forget_requests(self) -> None:
        """Drop the records so far (behaviour and models stay), e.g. a gateway's start-up check."""
        self._log.clear()

    def wait_for_request(self, n: int = 1, timeout: float = 5.0) -> RecordedRequest:
        """Block until the n-th request (1-based, since the last reset) has arrived."""
        return self._log.wait_for(n, timeout)


def _serve(server: QuickServer, listener: socket.socket) -> None:
    try:
        with asyncio.Runner() as runner:
            runner.run(server.serve(sockets=[listener]))
    finally:
        listener.close()
        server.ready.set()  # never leave start() waiting
