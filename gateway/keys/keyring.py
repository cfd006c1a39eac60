"""The server's in-memory view of the key store.

Lookups on the request path are a dict access: no database call, nothing that can block the
event loop. A background task asks the store what changed since its cursor (written by the CLI,
the admin API, another replica) and applies just that, so created, changed, revoked and rotated
keys take effect within about one refresh interval at a cost proportional to the change, not to
the number of keys: the read runs on the store's executor, and applying it on the event loop
touches only the keys it names. A full read (at start, or when the store cannot vouch for the
cursor: a replaced database file) builds the new maps off the event loop and swaps them in.
A key the server does not recognise (new, or rotated a moment ago) makes it look at the store
before refusing (one shared look at most every ``MISS_RECHECK`` seconds), so a key works the
moment the CLI has printed it; the admin API makes the same call after each write, so a change
acts on this server before its answer goes out. A change notice from the store (a PostgreSQL
``NOTIFY`` carrying key ids, see ``notices.py``) asks for the same look; polling heals a lost one.
Last-use times are collected in memory and written in batches.

Store work runs on the ``executor`` given (the database's own thread in the server). Closing stops
the poller between rounds, never inside one: a write it began finishes before the store closes.
When the store cannot be read, the keys already loaded keep being served (the database logs why);
this logs once when the store fails and once when it answers again, not every round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from gateway.database.outage import OutageLog
from gateway.errors import DatabaseFailed
from gateway.keys.store import KeyChanges, KeyRecord, KeyStore

# Unknown key ids trigger at most one store check per this many seconds, whoever sends them.
MISS_RECHECK = 0.1
# A store that cannot be read (locked, gone) or holds a record this version cannot read (written
# by a newer CLI): keep serving the keys already loaded.
_STORE_ERRORS = (DatabaseFailed, ValueError)

log = logging.getLogger("gateway.keys")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Update:
    """A read of the store, made ready off the event loop: for a full read, the maps to swap in."""

    changes: KeyChanges
    keys: dict[str, KeyRecord] | None = None
    owners: dict[bytes, str] | None = None


class Keyring:
    def __init__(
        self,
        open_store: Callable[[], KeyStore],
        *,
        refresh_interval: float = 1.0,
        executor: Executor | None = None,
    ) -> None:
        self._open_store = open_store
        self._store: KeyStore | None = None
        self._interval = refresh_interval
        self._executor = executor
        self._keys: dict[str, KeyRecord] = {}
        # An Ollama public key's SSH blob -> the id of the key it belongs to.
        self._owners: dict[bytes, str] = {}
        self._cursor: Hashable | None = None  # the store's, from the last read applied
        self._used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._outage = OutageLog(log, "key store available again")
        self._refreshing: asyncio.Task[None] | None = None
        self._next_catch_up = 0.0
        self._looks = 0  # looks at the store begun so far
        self._reads = 0  # of those, the ones that have begun reading (written by the look's thread)

    def get(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    def owner_of(self, public_key: bytes) -> KeyRecord | None:
        """The key an Ollama public key (its SSH blob) belongs to."""
        key_id = self._owners.get(public_key)
        return None if key_id is None else self._keys.get(key_id)

    def has_usable_key(self) -> bool:
        """Whether any loaded key could authenticate now (not revoked, not expired)."""
        now = time.time()
        return any(record.usable(now) for record in self._keys.values())

    async def catch_up(self) -> None:
        """Return once a look at the store that began after this call has finished: whatever was
        committed before the call (a key the CLI just printed, a revocation the admin API just
        wrote) is then in memory. Looks are shared by everyone waiting, and those started here
        begin at most every MISS_RECHECK seconds."""
        # Looks that had begun reading the store before this call; any later one sees what it must.
        arrived = self._reads
        try:
            while True:
                running = self._refreshing
                if running is not None and self._looks > arrived:
                    await asyncio.shield(running)
                    return
                if running is not None:
                    # Reading since before this call: it may have read the change counter before
                    # the change was committed. Let it finish, then look again.
                    await asyncio.wait([running])
                    continue
                if self._looks > arrived:
                    return  # a look that began after this call has just finished
                wait = self._next_catch_up - time.monotonic()
                if wait > 0:
                    # Looked a moment ago: wait for the next slot (someone may start that look).
                    await asyncio.sleep(wait)
                    continue
                self._next_catch_up = time.monotonic() + MISS_RECHECK
                await self._refreshed()
                return
        except _STORE_ERRORS as error:
            self._failed(error)

    async def _refreshed(self) -> None:
        # One check at a time, shared by the poller and every request that asks meanwhile.
        if self._refreshing is None:
            self._looks += 1
            self._refreshing = asyncio.get_running_loop().create_task(self._look())
            self._refreshing.add_done_callback(self._refresh_done)
        await asyncio.shield(self._refreshing)

    async def _look(self) -> None:
        self._apply(await self._in_thread(self._refresh))

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # read here, so an error nobody awaited is not reported twice

    def note_use(self, key_id: str) -> None:
        self._used[key_id] = time.time()

    async def start(self) -> None:
        self._store = await self._in_thread(self._open_store)
        self._apply(await self._in_thread(self._read))
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            # Between rounds: a write the poller began finishes in its thread before the store
            # closes (cancelling would leave that thread writing while the store closed under it).
            self._stopping.set()
            await self._task
            self._task = None
        if self._refreshing is not None:
            # A look a request started runs in a thread: let it finish before the store closes.
            await asyncio.wait([self._refreshing])
        if self._store is not None:
            try:
                await self._flush()
            except _STORE_ERRORS as error:
                log.warning("could not record when keys were last used: %s", error)
            await self._in_thread(self._store.close)
            self._store = None

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                await self._refreshed()
                await self._flush()
            except _STORE_ERRORS as error:
                # Keep serving with the keys we have; the next round tries again.
                self._failed(error)
            else:
                self._outage.succeeded()

    def _failed(self, error: Exception) -> None:
        self._outage.failed(f"key store unavailable: {error}")

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _refresh(self) -> _Update:
        """A look at the store (in the store's thread)."""
        self._reads += 1  # before the read: a change committed before this line is seen
        return self._read()

    def _read(self) -> _Update:
        """What changed since the cursor, ready to apply."""
        changes = self._opened().changes(self._cursor)
        if not changes.full:
            return _Update(changes)
        keys = {record.id: record for record in changes.records}
        owners = {public.blob: record.id for record in changes.records for public in record.ollama_keys}
        return _Update(changes, keys, owners)

    def _apply(self, update: _Update) -> None:
        """On the event loop: a swap of whole maps, or the changed keys one by one."""
        if update.keys is not None and update.owners is not None:
            self._keys, self._owners = update.keys, update.owners
        else:
            for key_id in update.changes.removed:
                self._forget(key_id)
            for record in update.changes.records:
                self._forget(record.id)
                self._keys[record.id] = record
                for public in record.ollama_keys:
                    self._owners[public.blob] = record.id
        self._cursor = update.changes.cursor

    def _forget(self, key_id: str) -> None:
        old = self._keys.pop(key_id, None)
        if old is not None:
            for public in old.ollama_keys:
                # Unless the public key has moved to another key (applied before this one).
                if self._owners.get(public.blob) == key_id:
                    del self._owners[public.blob]

    def _opened(self) -> KeyStore:
        if self._store is None:
            raise RuntimeError("the keyring is not started")
        return self._store

    async def _flush(self) -> None:
        # Swapped on the event loop, written in a thread.
        used, self._used = self._used, {}
        store = self._opened()
        try:
            await self._in_thread(lambda: store.record_use(used))
        except _STORE_ERRORS:
            # Kept for the next round (a later time for a key wins).
            for key_id, when in used.items():
                self._used[key_id] = max(when, self._used.get(key_id, when))
            raise
