from __future__ import annotations

import pytest

from gateway.errors import InvalidPath
from gateway.routes.paths import checked_path, checked_query


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"/", "/"),
        (b"/api/chat", "/api/chat"),
        (b"/api/blobs/sha256:0123abcd", "/api/blobs/sha256:0123abcd"),
        (b"/v1/models/llama3.2:latest", "/v1/models/llama3.2:latest"),
        (b"/v1/models/llama3.2%3Alatest", "/v1/models/llama3.2:latest"),
        (b"/api/%74ags", "/api/tags"),
        (b"/api/tags/", "/api/tags/"),
    ],
)
def test_accepts_plain_paths(raw: bytes, decoded: str) -> None:
    assert checked_path(raw) == decoded


@pytest.mark.parametrize(
    "raw",
    [
        b"//evil.host/x",
        b"/api//tags",
        b"/api/../x",
        b"/api/./tags",
        b"/api/..",
        b"/api/%2e%2e/x",
        b"/api/%2E%2E/x",
        b"/api/.%2e/x",
        b"/api%2F..%2Fx",
        b"/api/a%2fb",
        b"/api/a%5cb",
        b"/api/a\\b",
        b"/api/a%00b",
        b"/api/a\x00b",
        b"/api/%252e%252e/x",
        b"/api/a b",
        b"/api/\xc3\xa9",
        b"/api/%ff",
        b"/api/a%0d%0aHost:%20evil",
        b"http://evil.host/api/tags",
        b"api/tags",
        b"",
    ],
)
def test_refuses_paths_that_could_escape(raw: bytes) -> None:
    with pytest.raises(InvalidPath):
        checked_path(raw)


def test_query_is_passed_when_plain() -> None:
    assert checked_query(b"a=1&b=%20x") == b"a=1&b=%20x"
    with pytest.raises(InvalidPath):
        checked_query(b"a=1 b")
    with pytest.raises(InvalidPath):
        checked_query(b"a=\r\nHost: evil")
