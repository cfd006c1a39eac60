"""The server's in-memory view of the key store.

Lookups on the request path are a dict access: no database call, nothing that can block the
event loop. A background task polls the store's change counter (written by the CLI) and reloads
when it moves, so created, changed, revoked and rotated keys take effect within about one
refresh interval. Last-use times are collected in memory and written in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable

from gateway.keystore import KeyRecord, KeyStore

log = logging.getLogger("gateway.keys")


class Keyring:
    def __init__(self, open_store: Callable[[], KeyStore], *, refresh_interval: float = 1.0) -> None:
        self._open_store = open_store
        self._store: KeyStore | None = None
        self._interval = refresh_interval
        self._keys: dict[str, KeyRecord] = {}
        self._version = -1
        self._used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    def note_use(self, key_id: str) -> None:
        self._used[key_id] = time.time()

    async def start(self) -> None:
        self._store = await asyncio.to_thread(self._open_store)
        await asyncio.to_thread(self._reload)
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._store is not None:
            await self._flush()
            self._store.close()
            self._store = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self._refresh)
                await self._flush()
            except sqlite3.Error as error:
                # Keep serving with the keys we have; the next round tries again.
                log.warning("key store unavailable: %s", error)

    def _refresh(self) -> None:
        if self._opened().version() != self._version:
            self._reload()

    def _reload(self) -> None:
        store = self._opened()
        version = store.version()
        self._keys = {record.id: record for record in store.load()}
        self._version = version

    def _opened(self) -> KeyStore:
        if self._store is None:
            raise RuntimeError("the keyring is not started")
        return self._store

    async def _flush(self) -> None:
        # Swapped on the event loop, written in a thread.
        used, self._used = self._used, {}
        await asyncio.to_thread(self._opened().record_use, used)
