"""What the load side sends: the two targets and the exact request bytes of each scenario.

Both targets get byte-for-byte the same requests (the key too: the fake ignores it), so the
only difference between a direct and a gateway figure is the gateway. One exception: a gateway
fronting several servers is told which one a blob goes to (``X-Gateway-Upstream``), as an admin
must tell it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench.stamps import Format

_MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@dataclass(frozen=True)
class Target:
    name: str  # "direct", or a gateway side: "gateway", "gateway_3up"
    host: str
    port: int
    key: str | None = None
    admin_upstream: str | None = None  # X-Gateway-Upstream on admin routes (blobs)

    def request(
        self, method: str, path: str, body: bytes = b"", *, length: int | None = None, admin: bool = False
    ) -> bytes:
        """Request head plus ``body``; ``length`` announces a body that is sent separately."""
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "User-Agent: ollama-gateway-bench",
            "Accept: */*",
        ]
        if self.key:
            lines.append(f"Authorization: Bearer {self.key}")
        if admin and self.admin_upstream:
            lines.append(f"X-Gateway-Upstream: {self.admin_upstream}")
        if method == "POST":
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def small_chat(target: Target, path: str) -> bytes:
    """A small non-streamed chat on /api/chat or /v1/chat/completions."""
    body = {"model": "bench", "messages": _MESSAGES, "stream": False}
    return target.request("POST", path, _json(body))


def stream_chat(
    target: Target,
    fmt: Format,
    tokens: int,
    interval: float,
    tag: str | None = None,
    *,
    cut_after: int = 0,
    cut: str = "",
) -> bytes:
    """A stream of ``tokens`` stamped tokens; ``cut_after`` K: the upstream drops the connection
    when token K is due, with ``cut`` "fin" (orderly close) or "rst" (reset)."""
    bench: dict[str, object] = {"interval_ms": interval * 1000}
    if tag is not None:
        bench["tag"] = tag
    if cut_after:
        bench["cut_after"] = cut_after
        bench["cut"] = cut or "fin"
    body: dict[str, object] = {"model": "bench", "messages": _MESSAGES, "stream": True, "bench": bench}
    if fmt is Format.NDJSON:
        body["options"] = {"num_predict": tokens}
        return target.request("POST", "/api/chat", _json(body))
    body["max_tokens"] = tokens
    body["stream_options"] = {"include_usage": True}
    return target.request("POST", "/v1/chat/completions", _json(body))


BLOB_DIGEST = "sha256:" + "ab" * 32


def blob_head(target: Target, size: int) -> bytes:
    return target.request("POST", f"/api/blobs/{BLOB_DIGEST}", length=size, admin=True)
