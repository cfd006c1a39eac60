"""Answers for the whole fleet: ``/api/tags``, ``/api/ps`` and ``/v1/models`` list the union of
what every usable server lists (one entry per model name, the first server's in the configured
order), and ``/api/version`` gives the lowest version in the fleet, the one every client must
be compatible with. The key's model permissions filter the merged answer as they filter one
server's (the listing filter runs on whatever this returns)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from packaging.version import InvalidVersion, Version

from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.fleet import Fleet, Member
from gateway.fleet.member import version_text
from gateway.headers import Headers
from gateway.models import InvalidModelName, parse_model
from gateway.upstream import Outbound, UpstreamResponse, fetch

_LIMIT = 16 * 1024 * 1024
_JSON = (b"content-type", b"application/json; charset=utf-8")


class Answer:
    """A response the gateway composed itself, shaped like an upstream's."""

    def __init__(self, status: int, body: bytes, content_type: tuple[bytes, bytes] = _JSON) -> None:
        self.status = status
        self._body = body
        self.headers: Headers = [content_type, (b"content-length", str(len(body)).encode())]

    async def body(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body

    async def aclose(self) -> None:
        pass


class FleetListing:
    """An ``Upstream`` answering one listing route for the whole fleet."""

    def __init__(self, fleet: Fleet, route: str) -> None:
        self._fleet = fleet
        self._route = route

    async def send(self, request: Outbound) -> UpstreamResponse:
        members = self._fleet.usable()
        results = await asyncio.gather(*(self._ask(member, request.target) for member in members))
        answers = [body for body in results if body is not None]
        if not answers:
            raise UpstreamUnavailable(f"no upstream answered {self._route} ({self._fleet.reasons()})")
        if self._route == "/api/version":
            return Answer(200, _json({"version": lowest(answers)}))
        field, name_key = ("data", "id") if self._route == "/v1/models" else ("models", "model")
        merged = merge(answers, field, name_key)
        if self._route == "/v1/models":
            # Ollama's own quirk, kept: an empty model list is null here, [] elsewhere.
            return Answer(200, _json({"object": "list", "data": merged or None}))
        return Answer(200, _json({"models": merged}))

    async def _ask(self, member: Member, target: str) -> object | None:
        try:
            status, body = await fetch(member.client, target, limit=_LIMIT)
            if status != 200:
                raise ValueError(f"{target} answered {status}")
            answer: object = json.loads(body)
            return answer
        except (GatewayError, ValueError) as error:
            self._fleet.mark_down(member, error.message if isinstance(error, GatewayError) else str(error))
            return None

    async def aclose(self) -> None:
        pass


def merge(answers: list[object], field: str, name_key: str) -> list[object]:
    """Every entry of ``field`` across ``answers``, one per normalised model name, first kept."""
    seen: set[str] = set()
    merged: list[object] = []
    for answer in answers:
        entries = answer.get(field) if isinstance(answer, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            name = entry.get(name_key) or entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            try:
                key = str(parse_model(name))
            except InvalidModelName:
                key = name
            if key not in seen:
                seen.add(key)
                merged.append(entry)
    return merged


def lowest(answers: list[object]) -> str:
    """The lowest version among ``{"version": ...}`` answers (unreadable ones are skipped)."""
    texts = [text for answer in answers if (text := version_text(answer)) is not None]
    versions: list[tuple[Version, str]] = []
    for text in texts:
        try:
            versions.append((Version(text), text))
        except InvalidVersion:
            continue
    if versions:
        return min(versions)[1]
    return texts[0] if texts else "0.0.0"


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
