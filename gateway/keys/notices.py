"""Change notices from a shared database (PostgreSQL's LISTEN/NOTIFY: the ids of keys changed on
any replica), turned into keyring look-ups on this one. A notice asks for a look that begins after
it (the keyring's ``catch_up``, which reads every change since its cursor: the ids name what
changed, the change feed says how); notices arriving while a look-up is asked for are served by
the next one, so there is one look-up at a time however many notices come. A lost connection may
have dropped notices, so its return asks for a look too. The keyring's polling stays the
fallback: a notice is a shortcut, never the only way a change arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class KeyNotices:
    def __init__(self, look: Callable[[], Awaitable[None]]) -> None:
        self._look = look
        self._pending = False
        self._task: asyncio.Task[None] | None = None

    def notice(self, key_id: str) -> None:
        """A key changed (called on the event loop by the listener)."""
        self._wake()

    def reconnected(self) -> None:
        """Notices may have been missed while the listener was away."""
        self._wake()

    async def drained(self) -> None:
        """Return once every notice so far has had its look."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self) -> None:
        self._pending = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            self._pending = False
            await self._look()
