"""The gateway's own endpoints, outside /api and /v1: liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from gateway.database import AnyDatabase, describe
from gateway.database.outage import OutageLog
from gateway.database.postgres import PostgresDatabase
from gateway.database.sqlite import DatabaseGone
from gateway.errors import DatabaseFailed, DatabaseUnavailable, GatewayError
from gateway.fleet import Fleet, State
from gateway.observe.metrics import CONTENT_TYPE, Metrics
from gateway.policies.limits import Limiter
from gateway.proxy.upstream import Upstream, fetch_version
from gateway.routes.guard import Guard

READY_TIMEOUT = 5.0
# The database probe: how long its write may wait for another writer, and for its turn on the
# database's thread. A held lock answers "not writable" within about a second, never holds a probe.
DATABASE_PROBE_BUSY = 1.0
DATABASE_PROBE_TIMEOUT = 1.5

# A shared database out of reach: the replica goes on serving what it holds in memory.
OUTAGE = "degraded: keys served from memory, usage kept in memory until the database is back"

log = logging.getLogger("gateway.database")
# A readiness check: a coroutine answering "ok", "degraded: <why>" (still serving, e.g. on local
# limits while Redis is away), or what is wrong (not ready).
Check = Callable[[], Awaitable[str]]


def health_router(checks: dict[str, Check], fleet: Fleet | None = None) -> APIRouter:
    """``/healthz`` and ``/readyz``; with several servers, ``/readyz`` lists each one's state."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive; touches nothing else."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when every dependency answers; the detail names what is not."""
        names = list(checks)
        results = await asyncio.gather(*(checks[name]() for name in names))
        detail = dict(zip(names, results, strict=True))
        ready = all(value == "ok" or value.startswith("degraded") for value in detail.values())
        answer: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": detail}
        if fleet is not None and fleet.solo is not None:
            # One server goes unnamed (its name is its address, which a stranger has no need to
            # learn): its load only, which `ollama-gateway upstreams` shows beside it.
            answer["upstream"] = {"in_flight": fleet.solo.in_flight, "queued": fleet.solo.queued}
        elif fleet is not None:
            # Public, like the rest of /readyz: states and load only, no model names.
            answer["upstreams"] = {
                member.name: {
                    "state": member.state.value,
                    "in_flight": member.in_flight,
                    "queued": member.queued,
                }
                for member in fleet.members
            }
        return JSONResponse(answer, 200 if ready else 503)

    return router


def metrics_router(metrics: Metrics, guard: Guard | None) -> APIRouter:
    """``/metrics``; with a guard, only for admin keys (the metrics name keys)."""
    router = APIRouter(dependencies=[Depends(guard)] if guard is not None else [])

    @router.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router


def upstream_check(upstream: Upstream) -> Check:
    async def check() -> str:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                status, _ = await fetch_version(upstream)
        except (GatewayError, TimeoutError):
            return "unavailable"
        return "ok" if status == 200 else f"status {status}"

    return check


def fleet_check(fleet: Fleet) -> Check:
    """Ready while a server answers: one server is asked now (nothing watches it); of several,
    the watchers keep each state current."""
    if fleet.solo is not None:
        return upstream_check(fleet.solo.client)

    async def check() -> str:
        if any(member.state is State.UNKNOWN for member in fleet.members):
            # Just started: ask now rather than answer before the first round is in.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_TIMEOUT):
                    await fleet.refresh_now()
        up = [member for member in fleet.members if member.state is State.UP]
        if not up:
            return "unavailable"
        down = len(fleet.members) - len(up)
        return f"degraded: {down} of {len(fleet.members)} servers not answering" if down else "ok"

    return check


def database_check(database: AnyDatabase) -> Check:
    """A real write (the heartbeat row), committed, within a bounded wait. Probes that arrive
    while one is running share it: however often /readyz is asked, one write at a time.

    A shared database (PostgreSQL) that cannot be reached leaves the replica degraded, not
    unready: it serves the keys it holds and keeps usage in memory, as every replica then must
    (marking them all unready would stop the whole service for want of its database)."""
    running: asyncio.Task[None] | None = None
    shared = isinstance(database, PostgresDatabase)
    name = describe(database)
    outage = OutageLog(log, f"database {name} is writable again")

    async def check() -> str:
        nonlocal running
        if running is None or running.done():
            beat = functools.partial(database.heartbeat, busy=DATABASE_PROBE_BUSY)
            running = asyncio.get_running_loop().create_task(database.call(beat))
            running.add_done_callback(_observed)
        try:
            async with asyncio.timeout(DATABASE_PROBE_TIMEOUT):
                await asyncio.shield(running)
        except DatabaseGone:
            answer = "not ready: no database file at its path"
        except DatabaseUnavailable as error:
            answer = f"{OUTAGE if shared else 'not writable'}: {error}"
        except DatabaseFailed as error:
            answer = f"not writable: {error}"
        except TimeoutError:
            answer = f"{OUTAGE if shared else 'not writable'}: timed out waiting for the database"
        else:
            answer = "ok"
        if answer == "ok":
            outage.succeeded()
        else:
            # Degraded (a shared database away) is a warning: the replica still serves.
            level = logging.WARNING if answer.startswith("degraded") else logging.ERROR
            outage.failed(f"database {name}: {answer}", level)
        return answer

    return check


def _observed(task: asyncio.Task[None]) -> None:
    # A probe nobody waits for any more (its callers timed out) must not report "never retrieved".
    if not task.cancelled():
        task.exception()


def limiter_check(limiter: Limiter) -> Check:
    async def check() -> str:
        return limiter.status()

    return check
