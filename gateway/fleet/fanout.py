"""``/api/pull`` and ``/api/delete`` sent to every server, with one answer for the client.

A streamed pull relays each server's NDJSON progress lines as they come, each with an added
``"upstream"`` field naming the server, and ends with one line for all of them: success when
every server succeeded, else one ``{"error": ...}`` naming each server's outcome. Unstreamed
answers are combined: success when every server succeeded (for delete: when it was deleted
somewhere and no server failed otherwise), else the first failure's status with every server's
outcome in the message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

from gateway.errors import GatewayError
from gateway.fleet.listings import Answer
from gateway.fleet.member import Member
from gateway.proxy.upstream import Outbound, UpstreamResponse, read_whole

_LIMIT = 65536
_NDJSON = (b"content-type", b"application/x-ndjson")
_SUCCESS = "success"
_UNFINISHED = "the progress stream ended before success"


class FanOut:
    """An ``Upstream`` sending one request to every server."""

    def __init__(self, members: Sequence[Member], *, stream: bool, where_held: bool) -> None:
        """``where_held``: done when done where the model was, the rest lacking it (a delete)."""
        self._members = tuple(members)
        self._stream = stream
        self._where_held = where_held

    async def send(self, request: Outbound) -> UpstreamResponse:
        if self._stream:
            return _Progress(self._members, request)
        outcomes = await asyncio.gather(*(_whole(member, request) for member in self._members))
        return _combined(list(zip(self._members, outcomes, strict=True)), where_held=self._where_held)

    async def aclose(self) -> None:
        pass


async def _whole(member: Member, request: Outbound) -> tuple[int, bytes]:
    try:
        response = await member.client.send(request)
    except GatewayError as error:
        return error.status, _line({"error": error.message})
    try:
        body = await read_whole(response, _LIMIT)
    except GatewayError as error:
        return error.status, _line({"error": error.message})
    return response.status, body


def _combined(outcomes: list[tuple[Member, tuple[int, bytes]]], *, where_held: bool) -> Answer:
    good = [(member, body) for member, (status, body) in outcomes if status == 200]
    absent = [member for member, (status, _) in outcomes if status == 404]
    failed = [(member, status, body) for member, (status, body) in outcomes if status not in (200, 404)]
    if not failed and (good and (where_held or not absent)):
        # Ollama's own success body: empty for delete, {"status":"success"} for pull.
        return Answer(200, good[0][1])
    if not failed and not good:
        return Answer(404, outcomes[0][1][1])
    status = failed[0][1] if failed else 404
    parts = [f"{member.name}: {_message(body, code)}" for member, (code, body) in outcomes]
    return Answer(status, _line({"error": "; ".join(parts)}))


def _message(body: bytes, status: int) -> str:
    """What a server's answer says went wrong: its error text, else its status and first words."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if isinstance(error, str):
        return error
    if status == 200:
        return "ok"
    text = " ".join(body[:200].decode("utf-8", "replace").split())
    return f"status {status}" + (f": {text}" if text else "")


class _Progress:
    """Every server's progress stream, interleaved line by line as the lines arrive.

    Only progress is relayed as it comes. Each server's last word (``{"status":"success"}``, an
    error line, an error answer, or a connection that fails) is held back, and one line says how
    it went everywhere once every server is done: clients stop reading at the first error or
    success line, and one server's failure must not end the others' pulls.
    """

    status = 200

    def __init__(self, members: Sequence[Member], request: Outbound) -> None:
        self.headers = [_NDJSON]
        self._members = members
        self._request = request
        # Bounded: a slow client holds the servers' streams back instead of filling memory.
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self._outcomes: dict[str, str] = {}
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
        outcomes = [(member.name, self._outcomes.get(member.name, _UNFINISHED)) for member in self._members]
        if all(outcome == _SUCCESS for _, outcome in outcomes):
            yield _line({"status": _SUCCESS}) + b"\n"
        else:
            yield _line({"error": "; ".join(f"{name}: {outcome}" for name, outcome in outcomes)}) + b"\n"

    async def _relay(self, member: Member) -> None:
        try:
            response = await member.client.send(self._request)
            try:
                if response.status != 200:
                    self._outcomes[member.name] = _message(await read_whole(response, _LIMIT), response.status)
                    return
                buffer = b""
                async for data in response.body():
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        await self._progress(member, line)
                    if len(buffer) > _LIMIT:
                        buffer = b""  # not a progress line: not worth holding
                await self._progress(member, buffer)
            finally:
                await response.aclose()
        except GatewayError as error:
            self._outcomes[member.name] = error.message
        finally:
            await self._lines.put(None)

    async def _progress(self, member: Member, line: bytes) -> None:
        try:
            value = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            return
        if isinstance(value.get("error"), str):
            self._outcomes[member.name] = value["error"]
        elif value.get("status") == _SUCCESS:
            self._outcomes[member.name] = _SUCCESS
        else:
            value["upstream"] = member.name
            await self._lines.put(_line(value) + b"\n")

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
