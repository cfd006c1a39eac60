"""What the fake saw: one record per request, readable from the test thread."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

BODY_KEEP_LIMIT = 1 << 20


@dataclass(eq=False)
class RecordedRequest:
    """One request as received.

    The server thread fills the response-side fields while the response is written; the
    events make waiting on them race-free.
    """

    method: str
    path: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]  # as received, names lower-cased
    client: tuple[str, int] | None
    received_at: float  # time.monotonic()
    body: bytes | None = None  # None when the body is larger than 1 MiB
    body_size: int = 0
    body_sha256: str = hashlib.sha256(b"").hexdigest()
    json: Any = None  # the parsed body, when it is JSON
    status: int | None = None  # response status, once the status line went out
    chunks_sent: int = 0  # body writes so far
    cut: bool = False  # the fake dropped the connection itself
    disconnected_at: float | None = None  # time.monotonic()
    client_disconnected: threading.Event = field(default_factory=threading.Event)
    completed: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_scope(cls, scope: Scope) -> RecordedRequest:
        client = scope.get("client")
        return cls(
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            client=(client[0], client[1]) if client else None,
            received_at=time.monotonic(),
        )

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def set_body(self, size: int, digest: str, kept: bytes | None) -> None:
        self.body_size = size
        self.body_sha256 = digest
        self.body = kept
        if kept:
            try:
                self.json = json.loads(kept)
            except ValueError:
                self.json = None


class RequestLog:
    """Thread-safe, ordered list of records."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._records: list[RecordedRequest] = []

    def append(self, record: RecordedRequest) -> None:
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()

    def snapshot(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._records)

    def wait_for(self, n: int, timeout: float) -> RecordedRequest:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(f"{len(self._records)} requests arrived, waited for {n}")
            return self._records[n - 1]

    def clear(self) -> None:
        with self._cond:
            self._records.clear()
