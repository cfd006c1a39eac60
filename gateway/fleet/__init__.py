"""The Ollama servers behind the gateway, and which one serves a request.

A fleet of one is still a fleet: every request is placed on it as on any server. What users see
differs only where ``Fleet.solo`` says (see there): its server answers as Ollama alone would. With
several, each server's models (``/api/tags``) and loaded models (``/api/ps``) are learned in the background
and after every model change made through the gateway, and a request naming a model goes to a
usable server that has it: first one that can start it now, then one that already holds it in
memory (so the fleet does not load a second copy while one is idle), then the least busy for its
weight. A server that cannot be reached is marked down at once; the watcher (``watch.py``) asks
it again, backing off, until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from gateway.fleet.config import MemberSpec
from gateway.fleet.member import Member, State
from gateway.fleet.queue import FairQueue
from gateway.fleet.watch import refresh, watch
from gateway.proxy.upstream import Upstream

__all__ = ["Fleet", "Member", "MemberSpec", "State"]

log = logging.getLogger("gateway")

# Seconds within which a finished refresh of every server counts as current.
_ROUND_GAP = 1.0
# How long a request for a model nobody seems to have waits for that refresh, at most.
_ROUND_WAIT = 2.0


class Fleet:
    def __init__(
        self,
        members: Sequence[tuple[MemberSpec, Upstream, Upstream]],
        *,
        concurrency: int,
        queue_timeout: float,
        refresh_interval: float,
        probe_timeout: float,
    ) -> None:
        """``members``: each server's spec, the client requests use, and the watcher's client."""
        self.members = tuple(
            Member(spec, client, probe, _queue(spec, concurrency, queue_timeout)) for spec, client, probe in members
        )
        self._by_name = {member.name: member for member in self.members}
        # The one place a fleet of one is told apart, for what users see of it: its server answers
        # every request as Ollama alone would (its own listings and 404s, any X-Gateway-Upstream
        # ignored, nothing fanned out); nothing watches it and it is never marked down (no other
        # server could serve meanwhile, and nothing would mark it up: it is asked when /readyz
        # is); and it goes unnamed where strangers look (its name is its address: /readyz and the
        # start-up line do not show it).
        self.solo: Member | None = self.members[0] if len(self.members) == 1 else None
        self._interval = refresh_interval
        self.probe_timeout = probe_timeout
        self._wake = {member.name: asyncio.Event() for member in self.members}
        self._tasks: list[asyncio.Task[None]] = []
        self._turn = 0
        self._round: asyncio.Task[None] | None = None
        self._round_at = 0.0

    def named(self, name: str) -> Member | None:
        return self._by_name.get(name)

    async def start(self) -> None:
        # One server needs no catalog: everything goes there whatever it holds.
        if self.solo is None:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(
                    watch(member, self._wake[member.name], interval=self._interval, wait=self.probe_timeout),
                    name=f"upstream-watch:{member.name}",
                )
                for member in self.members
            ]

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._round] if self._round is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients = {id(c): c for member in self.members for c in (member.client, member.probe)}
        await asyncio.gather(*(client.aclose() for client in clients.values()))

    def refresh_soon(self, members: Iterable[Member] | None = None) -> None:
        """Ask again now (a model was pulled, created, copied or deleted; a server failed)."""
        for member in self.members if members is None else members:
            self._wake[member.name].set()

    async def refresh_now(self) -> None:
        """Ask every usable server at once and wait for the answers, at most ``_ROUND_WAIT``
        seconds (a model no server seemed to have).

        Requests arriving meanwhile wait for the same round, and a round just finished is not
        repeated: requests for a model nobody has must not turn into a flood of listings.
        """
        loop = asyncio.get_running_loop()
        if self._round is None or (self._round.done() and loop.time() - self._round_at > _ROUND_GAP):
            self._round_at = loop.time()
            self._round = loop.create_task(self._refresh_all())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ROUND_WAIT):
                await asyncio.shield(self._round)

    async def _refresh_all(self) -> None:
        asked = [member for member in self.members if member.usable]
        await asyncio.gather(*(refresh(member, self.probe_timeout) for member in asked))

    def mark_down(self, member: Member, reason: str) -> None:
        """A request found ``member`` unreachable: skip it until the watcher sees it answer."""
        if self.solo is None:
            if member.mark_down(reason):
                log.warning("upstream %s is down: %s", member.name, member.reason)
            self.refresh_soon([member])

    def forget(self, member: Member, model: str) -> None:
        """``member`` said it does not have ``model`` after all (deleted behind our back)."""
        member.models = member.models - {model}
        member.loaded.discard(model)
        self.refresh_soon([member])

    def usable(self) -> list[Member]:
        return [member for member in self.members if member.usable]

    def holders(self, model: str) -> list[Member]:
        """Usable servers that have ``model`` (a normalised name), in order of preference."""
        found = self._in_turn([member for member in self.members if member.usable and model in member.models])
        found.sort(key=lambda member: (not member.free, model not in member.loaded, member.load))
        return found

    def least_busy(self) -> Member | None:
        """For a request that names no model: the usable server with the lightest load."""
        usable = self._in_turn(self.usable())
        return min(usable, key=lambda member: (not member.free, member.load)) if usable else None

    def _in_turn(self, members: list[Member]) -> list[Member]:
        # Equal servers take turns (the sorts that follow are stable), so ties do not all land
        # on the first one listed.
        if len(members) > 1:
            self._turn = (self._turn + 1) % len(members)
            members = members[self._turn :] + members[: self._turn]
        return members

    def states(self) -> list[dict[str, object]]:
        return [member.snapshot() for member in self.members]

    def reasons(self) -> str:
        """Each server's state, for an error that says why nothing could serve."""
        return "; ".join(f"{member.name}: {member.reason or member.state.value}" for member in self.members)

    def ready(self) -> bool:
        return any(member.state is State.UP for member in self.members)


def _queue(spec: MemberSpec, concurrency: int, timeout: float) -> FairQueue | None:
    capacity = spec.max_concurrency if spec.max_concurrency is not None else concurrency
    return FairQueue(capacity, timeout=timeout) if capacity else None
