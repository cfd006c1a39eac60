"""A finished request's record, for tests of the sinks that consume it."""

from __future__ import annotations

from gateway.observe.record import RequestRecord


def make_record(**fields: object) -> RequestRecord:
    base: dict[str, object] = {
        "time": 1_767_225_600.25,  # 2026-01-01T00:00:00.250Z
        "request_id": "r1",
        "key_id": "k1",
        "key_name": "alice",
        "client": "192.0.2.1",
        "method": "POST",
        "path": "/api/chat",
        "route": "/api/chat",
        "route_class": "inference",
        "model": "llama3.2",
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 10,
        "bytes_out": 20,
        "duration": 1.5,
        "ttfb": 0.25,
        "overhead": 0.0012345,
        "queue_wait": 0.0,
        "forwarded": True,
        "streamed": True,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "tokens_exact": True,
        "outcome": "ok",
        "upstream": "gpu-a",
        "request_body": b'{"prompt":"secret plans"}',
    }
    return RequestRecord(**(base | fields))  # type: ignore[arg-type]
