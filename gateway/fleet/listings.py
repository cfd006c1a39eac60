"""Answers for the whole fleet: ``/api/tags``, ``/api/ps`` and ``/v1/models`` list the union of
what every usable server lists (one entry per model name, the first server's in the configured
order), and ``/api/version`` gives the lowest version in the fleet, the one every client must
be compatible with. The key's model permissions filter the merged answer as they filter one
server's (the listing filter runs on whatever this returns)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from packaging.version import InvalidVersion, Version

from gateway.errors import GatewayError, UpstreamConnectTimeout, UpstreamNotReached, UpstreamUnavailable
from gateway.fleet import Fleet, Member
from gateway.fleet.member import version_text
from gateway.ollama.listjson import LIMIT, entry_name, read, write
from gateway.ollama.models import listed_model
from gateway.ollama.surfaces import Fleetwide, Route
from gateway.proxy.headers import Headers
from gateway.proxy.upstream import Outbound, UpstreamResponse, fetch

_JSON = (b"content-type", b"application/json; charset=utf-8")


class Answer:
    """A response held whole (composed by the gateway, or read before deciding), shaped like an
    upstream's."""

    def __init__(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        self.status = status
        self.content = body
        kept = [(name, value) for name, value in headers or [_JSON] if name != b"content-length"]
        self.headers: Headers = [*kept, (b"content-length", str(len(body)).encode())]

    async def body(self) -> AsyncIterator[bytes]:
        if self.content:
            yield self.content

    async def aclose(self) -> None:
        pass


class Merges:
    """The last merged answer of each listing route, by the bodies it was merged from.

    Servers answer the same bytes poll after poll: comparing them (~0.04 ms per 340 KB, 1,000
    models) costs far less than reading and merging them again (~1.5 ms per server). It holds one
    set of bodies per route, no more than one merge needs at a time.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[bytes, ...], bytes]] = {}

    def merged(self, route: str, bodies: tuple[bytes, ...], merge: Callable[[tuple[bytes, ...]], bytes]) -> bytes:
        last = self._last.get(route)
        if last is not None and last[0] == bodies:
            return last[1]
        answer = merge(bodies)
        self._last[route] = (bodies, answer)
        return answer


class FleetListing:
    """An ``Upstream`` answering one listing route for the whole fleet."""

    def __init__(self, fleet: Fleet, route: Route, merges: Merges) -> None:
        self._fleet = fleet
        self._route = route.name
        self._kind = route.fleetwide
        self._merges = merges

    async def send(self, request: Outbound) -> UpstreamResponse:
        members = self._fleet.usable()
        # The bare route: a client's query string has no business on every server.
        results = await asyncio.gather(*(self._ask(member) for member in members))
        bodies = tuple(body for body in results if body is not None)
        return Answer(200, self._merges.merged(self._route, bodies, self._merge))

    def _merge(self, bodies: tuple[bytes, ...]) -> bytes:
        answers = []
        for body in bodies:
            try:
                answers.append(read(body))
            except (ValueError, RecursionError):
                continue
        if not answers:
            raise UpstreamUnavailable(f"no upstream answered {self._route} ({self._fleet.reasons()})")
        kind = self._kind
        if kind is Fleetwide.VERSION:
            return write({"version": lowest(answers)})
        field, name_key = ("data", "id") if kind is Fleetwide.OPENAI_MODELS else ("models", "model")
        merged = merge(answers, field, name_key)
        if kind is Fleetwide.NEWEST_MODELS:
            # As Ollama lists them: the most recently modified first (RFC 3339 sorts as text
            # within one offset, which Ollama always writes as its server's).
            merged.sort(key=_modified, reverse=True)
        if kind is Fleetwide.OPENAI_MODELS:
            # Ollama's own quirk, kept: an empty model list is null here, [] elsewhere.
            return write({"object": "list", "data": merged or None})
        return write({"models": merged})

    async def _ask(self, member: Member) -> bytes | None:
        """One server's answer (200), or None; only a server that cannot be reached is marked down
        (one that answers, even with an error, is alive)."""
        try:
            async with asyncio.timeout(self._fleet.probe_timeout):
                # On the watcher's connections: a listing must not wait behind busy generations.
                status, body = await fetch(member.probe, self._route, limit=LIMIT)
        except (UpstreamNotReached, UpstreamConnectTimeout) as error:
            self._fleet.mark_down(member, error.message)
            return None
        except (GatewayError, TimeoutError):
            return None
        return body if status == 200 else None

    async def aclose(self) -> None:
        pass


def merge(answers: list[object], field: str, name_key: str) -> list[object]:
    """Every entry of ``field`` across ``answers``, one per normalised model name, first kept."""
    seen: set[str] = set()
    merged: list[object] = []
    for answer in answers:
        entries = answer.get(field) if isinstance(answer, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            name = entry_name(entry, name_key)
            if name is None:
                continue
            model = listed_model(name)
            key = name if model is None else str(model)
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


def _modified(entry: object) -> str:
    value = entry.get("modified_at") if isinstance(entry, dict) else None
    return value if isinstance(value, str) else ""
