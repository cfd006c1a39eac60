"""Usage accounting: per key, per model, per UTC day, aggregated in memory and written in batches.

Counting happens on the event loop (a dict update per request); writing happens in a thread every
``flush_interval`` seconds, and once more at shutdown, after requests have drained. A hard crash
of the process loses the requests that finished since the last flush (at most ``flush_interval``
seconds' worth) and those still in flight; a batch the database refused (locked, full, or no file
at its path) is kept in memory and retried, so nothing is written to a file that was replaced or
removed. The store's work runs on the ``executor`` given (the database's own thread in the server).

An error is a request that did not end well for a reason other than its client leaving: a refusal,
an upstream failure, or an upstream answer with an error status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from gateway.database.outage import OutageLog
from gateway.errors import DatabaseFailed
from gateway.observe.record import RequestRecord
from gateway.usage.store import UsageCounts, UsageKey, UsageStore

log = logging.getLogger("gateway.usage")


class UsageLedger:
    def __init__(
        self,
        open_store: Callable[[], UsageStore],
        *,
        flush_interval: float = 2.0,
        executor: Executor | None = None,
    ) -> None:
        self._open_store = open_store
        self._store: UsageStore | None = None
        self._interval = flush_interval
        self._executor = executor
        self._outage = OutageLog(log, "usage written again")
        self._pending: dict[UsageKey, UsageCounts] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def __call__(self, record: RequestRecord) -> None:
        """A sink: count one finished request (requests without a key are not accounted)."""
        if record.key_id is None or record.key_name is None:
            return
        day = dt.datetime.fromtimestamp(record.time, dt.UTC).date().isoformat()
        key = UsageKey(day, record.key_id, record.key_name, record.model or "")
        counts = self._pending.get(key)
        if counts is None:
            counts = self._pending[key] = UsageCounts()
        counts.requests += 1
        counts.prompt_tokens += record.prompt_tokens
        counts.completion_tokens += record.completion_tokens
        counts.errors += _is_error(record)

    @property
    def store(self) -> UsageStore | None:
        return self._store

    async def start(self) -> None:
        self._store = await asyncio.get_running_loop().run_in_executor(self._executor, self._open_store)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            # Let a write in progress finish (cancelling would leave its thread writing while the
            # store closes under it), then write what is left.
            self._stopping.set()
            await self._task
            self._task = None
        if self._store is not None:
            await self.flush()
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
            self._store = None

    async def flush(self) -> None:
        if not self._pending or self._store is None:
            return
        batch, self._pending = self._pending, {}
        store = self._store
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, lambda: store.add(batch))
        except DatabaseFailed as error:
            # Put the counts back so the next flush retries them.
            for key, counts in batch.items():
                self._pending.setdefault(key, UsageCounts()).add(counts)
            self._outage.failed(f"usage not written yet (kept in memory, retried): {error}")
        else:
            self._outage.succeeded()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
            await self.flush()


def _is_error(record: RequestRecord) -> bool:
    if record.outcome == "client_disconnect":
        return False
    return record.outcome != "ok" or record.status >= 400
