from __future__ import annotations

from gateway.proxy.clientaddr import ClientResolver
from gateway.proxy.headers import client_response_headers, is_stream, upstream_request_headers
from gateway.routes.requestid import request_id


def test_request_headers_lose_credentials_hop_by_hop_and_origin() -> None:
    incoming = [
        (b"host", b"gateway.example"),
        (b"authorization", b"Bearer sk-secret"),
        (b"x-api-key", b"sk-secret"),
        (b"cookie", b"session=1"),
        (b"origin", b"https://app.example"),
        (b"connection", b"keep-alive, x-custom-hop"),
        (b"x-custom-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic abc"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-request-id", b"client-id"),
        (b"accept-encoding", b"gzip"),
        (b"content-type", b"application/json"),
        (b"user-agent", b"ollama-python/0.6.3"),
        (b"x-stainless-lang", b"python"),
        (b"openai-beta", b"assistants=v2"),
    ]
    out = upstream_request_headers(incoming, forwarded_for=b"10.0.0.1", forwarded_proto=b"https", request_id=b"rid")
    assert out == [
        (b"content-type", b"application/json"),
        (b"user-agent", b"ollama-python/0.6.3"),
        (b"x-stainless-lang", b"python"),
        (b"openai-beta", b"assistants=v2"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-request-id", b"rid"),
        (b"accept-encoding", b"identity"),
    ]


def test_response_headers_keep_content_type_exactly() -> None:
    upstream = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Date", b"Sun, 22 Nov 2026 10:00:00 GMT"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"Content-Length", b"12"),
    ]
    assert client_response_headers(upstream) == [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Content-Length", b"12"),
    ]


def test_stream_detection_uses_the_response_type() -> None:
    assert is_stream(b"application/x-ndjson")
    assert is_stream(b"text/event-stream")
    assert not is_stream(b"application/json; charset=utf-8")
    assert not is_stream(None)


def test_request_id_reuses_only_sane_values() -> None:
    assert request_id(b"abc-123_x.y:z") == b"abc-123_x.y:z"
    for bad in (b"", b"a b", b"x" * 129, b"<script>", None):
        generated = request_id(bad)
        assert len(generated) == 32
        assert generated != bad


def test_fresh_request_ids_are_distinct_random_hex_across_batches() -> None:
    # Cut from batched reads of the random source: never one repeated, across several reads.
    ids = [request_id(None) for _ in range(3 * 256 + 7)]
    assert len(set(ids)) == len(ids)
    assert all(len(one) == 32 and int(one, 16) >= 0 for one in ids)


def test_forwarded_headers_only_from_trusted_peers() -> None:
    untrusted = ClientResolver([])
    address = untrusted.resolve("1.2.3.4", "http", b"6.6.6.6", b"https")
    assert (address.ip, address.proto, address.forwarded_for) == ("1.2.3.4", "http", "1.2.3.4")

    trusted = ClientResolver(["10.0.0.0/8"])
    address = trusted.resolve("10.0.0.5", "http", b"203.0.113.9, 10.0.0.7", b"https")
    assert (address.ip, address.proto) == ("203.0.113.9", "https")
    assert address.forwarded_for == "203.0.113.9, 10.0.0.7, 10.0.0.5"
    # A client-supplied hop in front of a real one cannot pick the address.
    address = trusted.resolve("10.0.0.5", "http", b"1.1.1.1, 198.51.100.2", None)
    assert (address.ip, address.proto) == ("198.51.100.2", "http")
