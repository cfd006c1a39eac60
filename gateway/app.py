"""Assembly: build every component from settings and wire them into one ``Gateway``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import Lifespan

from gateway import __version__
from gateway.accesslog import AccessLog, chosen_format
from gateway.accounting import UsageLedger
from gateway.auth import Authenticator, AuthPolicy
from gateway.clientaddr import ClientResolver
from gateway.cors import Cors
from gateway.dispatch import Gateway
from gateway.endpoints import (
    READY_TIMEOUT,
    Check,
    database_check,
    health_router,
    limiter_check,
    metrics_router,
    upstream_check,
)
from gateway.errors import Dialect, GatewayError, render
from gateway.forwarding import ForwardedRoutes
from gateway.guard import admin_scope
from gateway.keyring import Keyring
from gateway.keystore import open_keystore
from gateway.limits import Quota, open_limiter
from gateway.limits.policy import LimitPolicy
from gateway.limits.queue import FairQueue
from gateway.lockout import Lockout
from gateway.metrics import Metrics
from gateway.permissions import ModelPolicy, RoutePolicy
from gateway.requestbody import RequestBodyPolicy
from gateway.settings import Settings
from gateway.startup import report_start
from gateway.upstream import Upstream, open_upstream
from gateway.usagerequest import StreamUsagePolicy
from gateway.usagestore import SqliteUsageStore


def create_app(settings: Settings, *, upstream: Upstream | None = None) -> Gateway:
    """Build the gateway. ``upstream`` replaces the HTTP client (tests inject transports)."""
    client: Upstream = upstream or open_upstream(
        settings.upstream_client,
        settings.upstream_url,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout or None,
        write_timeout=settings.write_timeout or None,
        max_connections=settings.upstream_max_connections,
    )
    keyring = Keyring(lambda: open_keystore(settings.database_url), refresh_interval=settings.key_refresh_interval)
    authenticator = Authenticator(
        keyring, Lockout(limit=settings.auth_failure_limit, window=settings.auth_failure_window)
    )
    limiter = open_limiter(settings.redis_url, fail_closed=settings.redis_fail_closed)
    queue = (
        FairQueue(settings.upstream_concurrency, timeout=settings.queue_timeout)
        if settings.upstream_concurrency
        else None
    )
    ledger = UsageLedger(lambda: SqliteUsageStore(settings.database_url), flush_interval=settings.usage_flush_interval)
    metrics = Metrics()

    resolver = ClientResolver(settings.trusted_proxies)
    forwarded = ForwardedRoutes(
        client,
        resolver=resolver,
        max_body_bytes=settings.max_body_bytes,
        cors=Cors(settings.cors_origins) if settings.cors_origins else None,
        # The order requests pass through: who is calling, then what they may reach.
        policies=[
            AuthPolicy(authenticator),
            RoutePolicy(allow_cloud=settings.allow_cloud),
            RequestBodyPolicy(max_body_bytes=settings.max_body_bytes),
            ModelPolicy(allow_cloud=settings.allow_cloud),
            StreamUsagePolicy(),
            LimitPolicy(
                limiter,
                queue,
                defaults=Quota(
                    rpm=settings.default_rpm,
                    tpm=settings.default_tpm,
                    tpd=settings.default_tpd,
                    concurrency=settings.default_concurrency,
                ),
                default_completion_tokens=settings.default_max_tokens,
            ),
        ],
        # Every finished request, once, to each of these.
        sinks=[
            AccessLog(fmt=chosen_format(settings.log_format, sys.stdout), log_prompts=settings.log_prompts),
            metrics,
            ledger,
        ],
    )
    metrics.track_in_flight(lambda: forwarded.in_flight)
    if queue is not None:
        metrics.track_queue_depth(lambda: queue.waiting)

    def usage_writable() -> bool:
        store = ledger.store
        if store is None:
            raise RuntimeError("usage store not open")
        return store.writable()

    checks: dict[str, Check] = {"upstream": upstream_check(client), "database": database_check(usage_writable)}
    if settings.redis_url:
        checks["redis"] = limiter_check(limiter)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await keyring.start()
        await ledger.start()
        await limiter.start()
        # In the background: a slow upstream must not hold up the listener.
        report = asyncio.get_running_loop().create_task(
            report_start(client, settings.upstream_url, keyring, wait=min(settings.connect_timeout, READY_TIMEOUT))
        )
        try:
            yield
        finally:
            report.cancel()
            await asyncio.gather(report, return_exceptions=True)
            # Requests have drained by now: write the last usage counts, then close.
            await ledger.close()
            await limiter.close()
            await keyring.close()
            await client.aclose()

    api = _fastapi(lifespan=lifespan)
    api.include_router(health_router(checks))
    metrics_app = _fastapi()
    if settings.metrics_address:
        metrics_app.include_router(metrics_router(metrics, None))
    else:
        api.include_router(metrics_router(metrics, admin_scope(authenticator, resolver)))
    return Gateway(api, forwarded, metrics, metrics_app)


def _fastapi(lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    api = FastAPI(
        title="ollama-gateway", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    @api.exception_handler(HTTPException)
    async def native_error(_: Request, exc: HTTPException) -> JSONResponse:
        # Outside /api and /v1 the gateway speaks Ollama's dialect too.
        return JSONResponse({"error": str(exc.detail).lower()}, exc.status_code, headers=exc.headers)

    @api.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return Response(render(exc, Dialect.NATIVE), exc.status, exc.headers, "application/json")

    return api
