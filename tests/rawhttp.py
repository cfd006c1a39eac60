"""A whole HTTP/1.1 response read off a plain socket, chunk framing and all.

Clients hide what a proxy got wrong at the byte level: httpx accepts a chunked body that stops
without its terminating chunk, and ollama-python ends a truncated stream quietly. This reader
keeps the evidence: the header names as sent, every chunk, and whether the body was terminated.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    chunks: list[bytes] = field(default_factory=list)
    terminated: bool = False  # chunked: the zero-length chunk came; otherwise Content-Length met

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def read_response(sock: socket.socket, received: bytes = b"", limit: int = 16 << 20) -> RawResponse:
    """Read one response to its end (the connection must close after it: send Connection: close).

    ``received``: what the test already read off the socket.
    """
    data = bytearray(received)
    while True:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
        assert len(data) <= limit, "response larger than the test expects"
    head, separator, rest = bytes(data).partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {bytes(data[:200])!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    response = RawResponse(int(status_line.split(" ")[1]), headers)
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        _dechunk(rest, response)
    else:
        length = response.header("content-length")
        response.chunks.append(rest)
        response.terminated = length is not None and len(rest) == int(length)
    return response


def _dechunk(data: bytes, response: RawResponse) -> None:
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return  # cut inside a chunk header: not terminated
        size = int(data[position:end].split(b";")[0], 16)
        start = end + 2
        if size == 0:
            response.terminated = data[start:] == b"\r\n"
            return
        if len(data) < start + size + 2 or data[start + size : start + size + 2] != b"\r\n":
            response.chunks.append(data[start : start + size])
            return  # cut inside a chunk's data
        response.chunks.append(data[start : start + size])
        position = start + size + 2
