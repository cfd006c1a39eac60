"""Change notices from a shared database (PostgreSQL's LISTEN/NOTIFY: the ids of keys changed on
any replica), turned into keyring look-ups on this one. Notices arriving while a look-up runs are
gathered into the next one: one look-up at a time, however many notices come. A lost connection
may have dropped notices, so its return asks for a full look (``None``). The keyring's polling
stays the fallback: a notice is a shortcut, never the only way a change arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# The keys changed, or None for "anything may have changed".
Changed = Callable[[frozenset[str] | None], Awaitable[None]]


class KeyNotices:
    def __init__(self, changed: Changed) -> None:
        self._changed = changed
        self._ids: set[str] = set()
        self._everything = False
        self._task: asyncio.Task[None] | None = None

    def notice(self, key_id: str) -> None:
        """One key changed (called on the event loop by the listener)."""
        self._ids.add(key_id)
        self._wake()

    def reconnected(self) -> None:
        """Notices may have been missed: look at everything."""
        self._everything = True
        self._wake()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._ids or self._everything:
            ids = None if self._everything else frozenset(self._ids)
            self._ids, self._everything = set(), False
            await self._changed(ids)
