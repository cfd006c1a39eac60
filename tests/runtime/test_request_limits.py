"""Limits the server protocol holds before a request reaches the application, over real sockets: a
request head past ``MAX_HEADERS`` fields or ``MAX_HEAD_BYTES`` is a 431 in its path's dialect
(never forwarded), and near the file-descriptor limit new connections get a 503, logged once per
burst and counted, where uvloop would close them without a word."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ALL_SCOPES, issue_key
from tests.fake_ollama import FakeOllama
from tests.rawhttp import read_response
from tests.servers import RunningGateway, gateway_process

pytestmark = pytest.mark.timeout(60)

# The documented limits (README, "Limits the gateway holds").
MAX_HEADERS = 100
MAX_HEAD_BYTES = 32 * 1024

_NATIVE_431 = {
    "error": "request header fields too large: at most 100 fields and 32768 bytes of request target, "
    "header names and values"
}


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _head(path: str, key: str, fields: int, extra: bytes = b"") -> bytes:
    # Host and Authorization are two of the fields.
    padding = b"".join(b"X-Pad-%d: v\r\n" % number for number in range(fields - 2))
    return b"GET %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n%s%s\r\n" % (
        path.encode(),
        key.encode(),
        padding,
        extra,
    )


def _exchange(url: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(url) as sock:
        sock.sendall(head)
        response = read_response(sock)
    return response.status, {name.lower(): value for name, value in response.headers}, response.body


def test_a_head_with_more_fields_than_the_limit_is_a_431_and_never_forwarded(
    gateway: RunningGateway, fake: FakeOllama
) -> None:
    status, headers, body = _exchange(gateway.url, _head("/api/tags", gateway.key, MAX_HEADERS + 1))
    assert (status, headers["content-type"], headers["connection"], json.loads(body)) == (
        431,
        "application/json",
        "close",
        _NATIVE_431,
    )
    status, _, body = _exchange(gateway.url, _head("/v1/models", gateway.key, 10_000))
    assert (status, json.loads(body)) == (
        431,
        {
            "error": {
                "message": _NATIVE_431["error"],
                "type": "invalid_request_error",
                "param": None,
                "code": "request_header_fields_too_large",
            }
        },
    )
    assert fake.requests == []
    # At the limit itself the request goes through, every field with it.
    status, _, _ = _exchange(gateway.url, _head("/api/tags", gateway.key, MAX_HEADERS))
    assert status == 200
    [forwarded] = fake.requests
    assert sum(name.startswith("x-pad-") for name, _ in forwarded.headers) == MAX_HEADERS - 2


def test_a_head_larger_than_the_limit_is_a_431(gateway: RunningGateway, fake: FakeOllama) -> None:
    big = b"X-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    status, _, body = _exchange(gateway.url, _head("/api/tags", gateway.key, 3, big))
    assert (status, json.loads(body)) == (431, _NATIVE_431)
    # A header line that never ends is answered once it has passed the limit, not when it ends.
    with _connect(gateway.url) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: gw\r\nX-Endless: ")
        for _ in range(4 * MAX_HEAD_BYTES // 16384):
            try:
                sock.sendall(b"a" * 16384)
            except BrokenPipeError:
                break  # answered and closed already: what is read next says how
        response = read_response(sock)
    assert (response.status, json.loads(response.body)) == (431, _NATIVE_431)
    assert fake.requests == []


_LIMITED = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
    "sys.argv[0] = 'gateway'; runpy.run_module('gateway', run_name='__main__', alter_sys=True)"
)


@pytest.fixture
def limited(fake: FakeOllama, database_url: str) -> Iterator[tuple[str, str, list[str]]]:
    """A gateway process that may open 64 file descriptors: its URL, an admin key, its stderr."""
    key = issue_key(database_url, "ops", scopes=ALL_SCOPES)
    env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url}
    with gateway_process(env, program=(sys.executable, "-c", _LIMITED)) as process:
        yield process.url, key, process.stderr.lines


def test_near_the_descriptor_limit_connections_get_a_503_logged_once_and_counted(
    limited: tuple[str, str, list[str]],
) -> None:
    url, key, stderr = limited
    refused: list[dict[str, str]] = []
    with ExitStack() as held:
        for _ in range(64):
            sock = held.enter_context(_connect(url))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = sock.recv(65536)
            assert head, "a connection closed without an answer"
            if head.startswith(b"HTTP/1.1 503"):
                response = read_response(sock, head)
                refused.append(json.loads(response.body))
                if len(refused) == 5:
                    break
            else:
                assert head.startswith(b"HTTP/1.1 200"), head
        assert refused == [{"error": "the gateway cannot take more connections now, try again later"}] * 5
    # Once connections are let go, new ones are served again, and the burst was one log line.
    metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert metrics.status_code == 200
    assert re.findall(r"^gateway_connections_refused_total (\S+)$", metrics.text, re.MULTILINE) == ["5.0"]
    warnings = [line for line in stderr if "refusing new connections" in line]
    assert len(warnings) == 1
    assert re.search(r"at least \d+ of the 64 file descriptors this process may open are in use", warnings[0])
