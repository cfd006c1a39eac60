"""``/api/pull`` and ``/api/delete`` sent to every server, with one answer for the client.

A streamed pull relays each server's NDJSON progress lines as they come, each with an added
``"upstream"`` field naming the server; a server that fails adds one ``{"error": ...}`` line
(which the clients raise on). Unstreamed answers are combined: success when every server
succeeded (for delete: when it was deleted somewhere and no server failed otherwise), else the
first failure's status with every server's outcome in the message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

from gateway.errors import GatewayError
from gateway.fleet.listings import Answer
from gateway.fleet.member import Member
from gateway.headers import STREAM_TYPES, header
from gateway.upstream import Outbound, UpstreamResponse

_LIMIT = 65536
_NDJSON = (b"content-type", b"application/x-ndjson")


class FanOut:
    """An ``Upstream`` sending one request to every server."""

    def __init__(self, members: Sequence[Member], *, stream: bool) -> None:
        self._members = tuple(members)
        self._stream = stream

    async def send(self, request: Outbound) -> UpstreamResponse:
        if self._stream:
            return _Progress(self._members, request)
        outcomes = await asyncio.gather(*(_whole(member, request) for member in self._members))
        return _combined(request.target, list(zip(self._members, outcomes, strict=True)))

    async def aclose(self) -> None:
        pass


async def _whole(member: Member, request: Outbound) -> tuple[int, bytes]:
    try:
        response = await member.client.send(request)
    except GatewayError as error:
        return error.status, _line({"error": error.message})
    body = bytearray()
    try:
        async for data in response.body():
            body += data[: _LIMIT - len(body)]
    except GatewayError as error:
        return error.status, _line({"error": error.message})
    finally:
        await response.aclose()
    return response.status, bytes(body)


def _combined(target: str, outcomes: list[tuple[Member, tuple[int, bytes]]]) -> Answer:
    deleting = target.startswith("/api/delete")
    good = [(member, body) for member, (status, body) in outcomes if status == 200]
    absent = [member for member, (status, _) in outcomes if status == 404]
    failed = [(member, status, body) for member, (status, body) in outcomes if status not in (200, 404)]
    if not failed and (good and (deleting or not absent)):
        # Ollama's own success body: empty for delete, {"status":"success"} for pull.
        return Answer(200, good[0][1])
    if not failed and not good:
        return Answer(404, outcomes[0][1][1])
    status = failed[0][1] if failed else 404
    parts = [f"{member.name}: {_message(body, code)}" for member, (code, body) in outcomes]
    return Answer(status, _line({"error": "; ".join(parts)}))


def _message(body: bytes, status: int) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, str):
        return error
    return "ok" if status == 200 else f"status {status}"


class _Progress:
    """Every server's progress stream, interleaved line by line as the lines arrive."""

    status = 200

    def __init__(self, members: Sequence[Member], request: Outbound) -> None:
        self.headers = [_NDJSON]
        self._members = members
        self._request = request
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def body(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._relay(member)) for member in self._members]
        running = len(self._tasks)
        while running:
            line = await self._lines.get()
            if line is None:
                running -= 1
            else:
                yield line

    async def _relay(self, member: Member) -> None:
        try:
            response = await member.client.send(self._request)
            try:
                streamed = (header(response.headers, b"content-type") or b"").startswith(STREAM_TYPES)
                buffer = b""
                async for data in response.body():
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._put(member, line)
                    if len(buffer) > _LIMIT:
                        buffer = b""  # not a progress line: not worth holding
                if buffer or not streamed:
                    self._put(member, buffer, failed=response.status != 200)
            finally:
                await response.aclose()
        except GatewayError as error:
            self._put(member, _line({"error": error.message}))
        finally:
            self._lines.put_nowait(None)

    def _put(self, member: Member, line: bytes, *, failed: bool = False) -> None:
        if not line.strip():
            return
        try:
            value = json.loads(line)
        except ValueError:
            value = {"error": line.decode("utf-8", "replace")} if failed else None
        if not isinstance(value, dict):
            return
        if failed and "error" not in value:
            value = {"error": _message(line, 0)}
        value["upstream"] = member.name
        self._lines.put_nowait(_line(value) + b"\n")

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
