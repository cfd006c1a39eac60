"""The Ollama servers behind the gateway, and which one serves a request.

With one server this is a formality: every request goes there, as it always has. With several,
each server's models (``/api/tags``) and loaded models (``/api/ps``) are learned in the background
and after every model change made through the gateway, and a request naming a model goes to a
usable server that has it: first one that can start it now, then one that already holds it in
memory (so the fleet does not load a second copy while one is idle), then the least busy for its
weight. A server that refuses a connection is marked down at once; the watcher (``watch.py``)
asks it again, backing off, until it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from gateway.fleet.config import MemberSpec
from gateway.fleet.member import Member, State
from gateway.fleet.watch import refresh, watch
from gateway.limits.queue import FairQueue
from gateway.upstream import Upstream

__all__ = ["Fleet", "Member", "MemberSpec", "State"]

# Seconds within which a finished refresh of every server counts as current.
_ROUND_GAP = 1.0


class Fleet:
    def __init__(
        self,
        members: Sequence[tuple[MemberSpec, Upstream]],
        *,
        concurrency: int,
        queue_timeout: float,
        refresh_interval: float,
        probe_timeout: float,
    ) -> None:
        self.members = tuple(Member(spec, client, _queue(spec, concurrency, queue_timeout)) for spec, client in members)
        self._by_name = {member.name: member for member in self.members}
        self._interval = refresh_interval
        self._probe_timeout = probe_timeout
        self._wake = {member.name: asyncio.Event() for member in self.members}
        self._tasks: list[asyncio.Task[None]] = []
        self._turn = 0
        self._round: asyncio.Task[None] | None = None
        self._round_at = 0.0

    @property
    def several(self) -> bool:
        return len(self.members) > 1

    def named(self, name: str) -> Member | None:
        return self._by_name.get(name)

    async def start(self) -> None:
        # One server needs no catalog: everything goes there whatever it holds.
        if self.several:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(
                    watch(member, self._wake[member.name], interval=self._interval, wait=self._probe_timeout),
                    name=f"upstream-watch:{member.name}",
                )
                for member in self.members
            ]

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._round] if self._round is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(member.client.aclose() for member in self.members))

    def refresh_soon(self, members: Iterable[Member] | None = None) -> None:
        """Ask again now (a model was pulled, created, copied or deleted; a server failed)."""
        for member in self.members if members is None else members:
            self._wake[member.name].set()

    async def refresh_now(self) -> None:
        """Ask every server at once and wait for the answers (a model no server seemed to have).

        Requests arriving meanwhile wait for the same round, and a round just finished is not
        repeated: requests for a model nobody has must not turn into a flood of listings.
        """
        loop = asyncio.get_running_loop()
        if self._round is None or (self._round.done() and loop.time() - self._round_at > _ROUND_GAP):
            self._round_at = loop.time()
            self._round = loop.create_task(self._refresh_all())
        await asyncio.shield(self._round)

    async def _refresh_all(self) -> None:
        await asyncio.gather(*(refresh(member, self._probe_timeout) for member in self.members))

    def mark_down(self, member: Member, reason: str) -> None:
        if self.several:
            member.mark_down(reason)
            self.refresh_soon([member])

    def usable(self) -> list[Member]:
        return [member for member in self.members if member.usable]

    def holders(self, model: str) -> list[Member]:
        """Usable servers that have ``model`` (a normalised name), in order of preference."""
        found = [member for member in self.members if member.usable and model in member.models]
        if len(found) > 1:
            # Equal servers take turns, so ties do not all land on the first one listed.
            self._turn = (self._turn + 1) % len(found)
            found = found[self._turn :] + found[: self._turn]
            found.sort(key=lambda member: (not member.has_free_slot, model not in member.loaded, member.load))
        return found

    def least_busy(self) -> Member | None:
        """For a request that names no model: the usable server with the lightest load."""
        usable = self.usable()
        return min(usable, key=lambda member: (not member.has_free_slot, member.load)) if usable else None

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
