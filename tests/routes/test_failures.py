"""Upstream failures and refused requests, each answered in the surface's dialect."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import ollama
import openai
import pytest

from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.servers import RunningGateway, free_port, gateway_process

pytestmark = pytest.mark.timeout(20)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("client", ["httptools", "httpx"])
def test_upstream_down_is_502_in_each_dialect_naming_the_address(
    make_gateway: Callable[..., RunningGateway], client: str
) -> None:
    port = free_port()
    gateway = make_gateway(upstream_url=f"http://127.0.0.1:{port}", upstream_client=client)
    native = httpx.post(gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10)
    assert native.status_code == 502
    assert native.headers["content-type"] == "application/json"
    message = native.json()["error"]
    # Which server, and why: what an operator needs to read off a client's error.
    reason = "Connection refused" if client == "httptools" else "All connection attempts failed"
    assert message == f"upstream 127.0.0.1:{port} unavailable: {reason}"
    compat = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=gateway.auth, timeout=10)
    assert compat.status_code == 502
    assert compat.json() == {
        "error": {"message": message, "type": "api_error", "param": None, "code": "upstream_unavailable"}
    }
    assert native.headers["x-request-id"] != compat.headers["x-request-id"]


def test_upstream_hanging_past_the_read_timeout_is_504(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(read_timeout=0.3)
    fake.behaviour = Behaviour(hang=True)
    response = httpx.post(
        gateway.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}, headers=gateway.auth, timeout=10
    )
    assert response.status_code == 504
    assert response.json() == {"error": "upstream timed out"}
    # The abandoned upstream request was closed, not left generating.
    assert fake.wait_for_request().client_disconnected.wait(1.0)


def test_upstream_dying_mid_stream_ends_ndjson_with_an_error_line(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=10, cut_after=2)
    response = httpx.post(gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10)
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert len(lines) == 3
    assert json.loads(lines[-1]) == {"error": "upstream connection lost"}
    with ollama.Client(host=gateway.url, headers=gateway.auth) as client:
        stream = client.chat(model="llama3.2", messages=CHAT["messages"], stream=True)  # type: ignore[arg-type]
        with pytest.raises(ollama.ResponseError) as caught:
            list(stream)
    assert caught.value.error == "upstream connection lost"


def test_upstream_dying_mid_sse_stream_ends_with_an_error_event(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=10, cut_after=2)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="llama3.2", messages=CHAT["messages"], stream=True):  # type: ignore[arg-type,call-overload]
            pass
    assert "upstream connection lost" in str(caught.value)
    client.close()


def test_upstream_error_line_passes_through(gateway: RunningGateway, fake: FakeOllama) -> None:
    fake.behaviour = Behaviour(tokens=10, fail_after=2)
    direct = httpx.post(fake.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}, timeout=10)
    relayed = httpx.post(
        gateway.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}, headers=gateway.auth, timeout=10
    )
    assert relayed.status_code == 200
    assert json.loads(relayed.text.splitlines()[-1]) == json.loads(direct.text.splitlines()[-1])
    assert "error" in json.loads(relayed.text.splitlines()[-1])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ("/api/generate", {"model": "nope", "prompt": "x"}),
        ("/api/embed", {"model": "nope", "input": "x"}),
        ("/api/chat", {"messages": []}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/chat/completions", {"model": "llama3.2", "messages": []}),
    ],
)
def test_upstream_errors_pass_through_unchanged(
    gateway: RunningGateway, fake: FakeOllama, path: str, body: dict[str, object]
) -> None:
    direct = httpx.post(fake.url + path, json=body, timeout=10)
    relayed = httpx.post(gateway.url + path, json=body, headers=gateway.auth, timeout=10)
    assert direct.status_code >= 400
    assert (relayed.status_code, relayed.headers["content-type"], relayed.content) == (
        direct.status_code,
        direct.headers["content-type"],
        direct.content,
    )


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/nothing-here"), ("GET", "/api/chat"), ("POST", "/api/tags")]
)
def test_router_errors_pass_through(gateway: RunningGateway, fake: FakeOllama, method: str, path: str) -> None:
    direct = httpx.request(method, fake.url + path, timeout=10)
    relayed = httpx.request(method, gateway.url + path, headers=gateway.auth, timeout=10)
    assert (relayed.status_code, relayed.text, relayed.headers.get("allow")) == (
        direct.status_code,
        direct.text,
        direct.headers.get("allow"),
    )
    assert relayed.headers["content-type"] == direct.headers["content-type"]


def test_oversized_body_is_413_without_contacting_the_upstream(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(max_body_bytes=4096)
    big = {"model": "llama3.2", "prompt": "x" * 5000}
    response = httpx.post(gateway.url + "/api/generate", json=big, headers=gateway.auth, timeout=10)
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 4096 bytes"}
    compat = httpx.post(gateway.url + "/v1/completions", json=big, headers=gateway.auth, timeout=10)
    assert compat.status_code == 413
    assert compat.json()["error"]["code"] == "request_too_large"
    assert fake.requests == []


def test_oversized_chunked_body_is_413(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(max_body_bytes=4096)

    def body() -> Iterator[bytes]:
        yield b'{"model":"llama3.2","prompt":"'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(gateway.url + "/api/generate", content=body(), headers=gateway.auth, timeout=10)
    assert response.status_code == 413
    # Whatever reached the upstream was abandoned, never answered.
    assert all(not recorded.completed.is_set() for recorded in fake.requests)


def test_unknown_gateway_path_is_native_404(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url + "/nothing", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}
    assert len(response.headers["x-request-id"]) == 32


def test_a_broken_stream_the_gateway_rewrites_still_ends_with_one_clean_error_event(
    gateway: RunningGateway, fake: FakeOllama
) -> None:
    # No include_usage from the client: the gateway rewrites this stream (see gateway/proxy/sse.py).
    fake.behaviour = Behaviour(tokens=10, cut_after=3)
    body = {**CHAT, "stream": True}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth, timeout=10)
    frames = response.content.split(b"\n\n")
    assert frames[-1] == b""
    assert all(frame.startswith(b"data: {") for frame in frames[:-1])
    assert json.loads(frames[-2][len(b"data: ") :])["error"]["code"] == "upstream_connection_lost"


def _truncating_upstream(listener: socket.socket, served: threading.Event) -> None:
    """Answers /api/version; every other request gets 10 of the 100 bytes its head promises."""
    listener.settimeout(10)
    for _ in range(5):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                piece = conn.recv(65536)
                if not piece:
                    break
                request += piece
            if request.startswith(b"GET /api/version "):
                body = b'{"version":"0.33.0"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n")
                conn.sendall(b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n")
            conn.sendall(b"Content-Length: 100\r\n\r\n" + b'{"license"')
            served.set()


def test_a_fixed_length_body_that_breaks_off_is_cut_without_a_traceback(database_url: str) -> None:
    key = issue_key(database_url, "someone")
    served = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        upstream = threading.Thread(target=_truncating_upstream, args=(listener, served), daemon=True)
        upstream.start()
        env = {
            "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
            "GATEWAY_DATABASE_URL": database_url,
        }
        with gateway_process(env) as gateway:
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(
                    gateway.url + "/api/show", json={"model": "llama3.2"}, headers={"Authorization": f"Bearer {key}"}
                )
            assert served.wait(5)
            line = json.loads(gateway.stdout.wait_for('"path":"/api/show"'))
            gateway.stop()
        # Wakes the accept() the thread may be blocked in (close() alone does not, on Linux).
        listener.shutdown(socket.SHUT_RDWR)
        upstream.join(timeout=5)
        assert not upstream.is_alive()
    # The client saw its body cut short; the operator sees one access line, not a traceback.
    assert line["outcome"] == "upstream_error"
    errors = "".join(gateway.stderr.lines)
    assert "Traceback" not in errors
    assert "Exception in ASGI application" not in errors
