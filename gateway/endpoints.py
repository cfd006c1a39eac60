"""The gateway's own endpoints, outside /api and /v1: liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from gateway.errors import GatewayError
from gateway.fleet import Fleet, State
from gateway.guard import Guard
from gateway.limits import Limiter
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.upstream import Upstream, fetch_version

READY_TIMEOUT = 5.0
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
        if fleet is not None and fleet.several:
            # Public, like the rest of /readyz: states and load only, no model names. (One server
            # is not listed: its name is its address, which a stranger has no need to learn.)
            answer["upstreams"] = {
                member.name: {
                    "state": member.state.value,
                    "in_flight": member.in_flight,
                    "queued": member.queue.waiting if member.queue is not None else 0,
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
    """Several servers: ready while one answers (the watchers keep each state current)."""

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


def database_check(writable: Callable[[], bool]) -> Check:
    async def check() -> str:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.to_thread(writable)
        except (sqlite3.Error, TimeoutError, RuntimeError):
            return "not writable"
        return "ok"

    return check


def limiter_check(limiter: Limiter) -> Check:
    async def check() -> str:
        return limiter.status()

    return check
