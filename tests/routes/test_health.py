"""Liveness touches nothing; readiness follows the upstream and the database."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

import httpx
import pytest
from fastapi import FastAPI

from gateway.routes.endpoints import Check, health_router
from tests.fake_ollama import FakeOllama
from tests.servers import RunningGateway, free_port

pytestmark = pytest.mark.timeout(30)

# One server's load, unnamed (``ollama-gateway upstreams`` shows it beside the server).
IDLE = {"in_flight": 0, "queued": 0}
READY = {"status": "ready", "checks": {"upstream": "ok", "database": "ok"}, "upstream": IDLE}


class VersionServer:
    """Just enough of Ollama for readiness, on a fixed port, that can go away and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._listener is not None and self._thread is not None:
            # shutdown() wakes the blocked accept(); afterwards connections are refused.
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._thread.join(5)
        self._listener = self._thread = None

    def __enter__(self) -> VersionServer:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    @staticmethod
    def _serve(listener: socket.socket) -> None:
        body = b'{"version":"0.33.0"}'
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request and (data := connection.recv(4096)):
                    request += data
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )


@pytest.fixture
def version_server() -> Iterator[VersionServer]:
    with VersionServer(free_port()) as server:
        yield server


def test_healthz_is_alive_without_asking_anyone(gateway: RunningGateway, fake: FakeOllama) -> None:
    response = httpx.get(gateway.url + "/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert fake.requests == []


def test_readyz_follows_the_upstream(
    make_gateway: Callable[..., RunningGateway], version_server: VersionServer
) -> None:
    gateway = make_gateway(upstream_url=f"http://127.0.0.1:{version_server.port}")
    ready = httpx.get(gateway.url + "/readyz")
    assert (ready.status_code, ready.json()) == (200, READY)

    version_server.stop()
    gone = httpx.get(gateway.url + "/readyz")
    assert (gone.status_code, gone.json()) == (
        503,
        {"status": "not ready", "checks": {"upstream": "unavailable", "database": "ok"}, "upstream": IDLE},
    )
    # Alive all the same: liveness must not restart a gateway whose upstream is down.
    assert httpx.get(gateway.url + "/healthz").status_code == 200

    version_server.start()
    back = httpx.get(gateway.url + "/readyz")
    assert (back.status_code, back.json()) == (200, READY)


def test_readyz_reports_an_upstream_error_status(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(upstream_url=fake.url + "/not-ollama")
    response = httpx.get(gateway.url + "/readyz")
    assert (response.status_code, response.json()["checks"]["upstream"]) == (503, "status 404")


async def test_readyz_is_ready_when_degraded_but_not_when_a_check_fails() -> None:
    def answering(value: str) -> Check:
        async def check() -> str:
            return value

        return check

    degraded = "degraded: redis unreachable, serving on local limits"
    for redis, status in [("ok", 200), (degraded, 200), ("unavailable", 503)]:
        api = FastAPI()
        api.include_router(health_router({"upstream": answering("ok"), "redis": answering(redis)}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gateway") as client:
            response = await client.get("/readyz")
        ready = "ready" if status == 200 else "not ready"
        assert (response.status_code, response.json()) == (
            status,
            {"status": ready, "checks": {"upstream": "ok", "redis": redis}},
        )
