"""Assembly: build every component from settings and wire them into one ``Gateway``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Lifespan

from gateway import __version__
from gateway.admin import AdminSources, LiveTraffic, admin_app
from gateway.admin.live import asked_now, queue_totals
from gateway.database import AnyDatabase, describe, open_database
from gateway.database.postgres import KEYS_CHANNEL, PostgresDatabase
from gateway.fleet import Fleet
from gateway.fleet.config import fleet_specs
from gateway.keys.keyring import Keyring
from gateway.keys.management import KeyAdmin
from gateway.keys.notices import KeyNotices
from gateway.keys.postgres import PostgresKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import QUOTA_NAMES
from gateway.observe.accesslog import AccessLog, AuditLog, chosen_format
from gateway.observe.connections import STATE_KEY as CONNECTION_GUARD
from gateway.observe.connections import ConnectionGuard, descriptor_limit
from gateway.observe.metrics import Metrics
from gateway.observe.startup import report_start
from gateway.policies.account import AccountPolicy
from gateway.policies.auth import Authenticator, AuthPolicy, SignedRequests
from gateway.policies.bodyreader import BodyBudget, BodyReader
from gateway.policies.limits import Quota, open_limiter
from gateway.policies.limits.policy import LimitPolicy
from gateway.policies.lockout import Lockout
from gateway.policies.permissions import ModelPolicy, RoutePolicy
from gateway.policies.requestbody import RequestBodyPolicy
from gateway.policies.routing import RoutingPolicy
from gateway.policies.usagerequest import StreamUsagePolicy
from gateway.proxy.clientaddr import ClientResolver
from gateway.proxy.upstream import Upstream, open_upstream
from gateway.routes.cors import Cors
from gateway.routes.dispatch import Gateway
from gateway.routes.endpoints import (
    READY_TIMEOUT,
    Check,
    database_check,
    fleet_check,
    health_router,
    limiter_check,
    metrics_router,
)
from gateway.routes.forwarding import ForwardedRoutes
from gateway.routes.guard import admin_scope
from gateway.routes.responses import install_error_handlers
from gateway.settings import Settings
from gateway.usage.accounting import UsageLedger
from gateway.usage.postgres import PostgresUsageStore
from gateway.usage.store import SqliteUsageStore

if TYPE_CHECKING:
    from gateway.keys.store import ManagedKeyStore
    from gateway.usage.store import ReportStore

log = logging.getLogger("gateway.keys")

# Each server's connections for the watcher and the merged listings (small, quick requests).
_PROBE_CONNECTIONS = 4


def create_app(settings: Settings, *, upstream: Upstream | None = None) -> Gateway:
    """Build the gateway. ``upstream`` replaces the HTTP client of a single server (tests inject
    transports)."""
    specs = fleet_specs(settings.upstream_url, settings.upstreams, settings.upstreams_file)
    if upstream is not None and len(specs) > 1:
        raise ValueError("an injected upstream client stands for one server, and several are configured")
    fleet = Fleet(
        [
            (
                spec,
                upstream or upstream_client(settings, spec.url),
                # The watcher's own few connections: a busy pool must not make a server look down.
                upstream or upstream_client(settings, spec.url, max_connections=_PROBE_CONNECTIONS),
            )
            for spec in specs
        ],
        concurrency=settings.upstream_concurrency,
        queue_timeout=settings.queue_timeout,
        refresh_interval=settings.upstream_refresh_interval,
        probe_timeout=min(settings.connect_timeout, READY_TIMEOUT) + READY_TIMEOUT,
    )
    # SQLite: one connection for the whole process, on its own thread (see database/sqlite.py);
    # PostgreSQL: a few, on the database's own threads (see database/postgres.py).
    database = open_database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        statement_timeout=settings.database_statement_timeout,
    )
    key_store, usage_store = _stores(database)
    keyring = Keyring(lambda: key_store, refresh_interval=settings.key_refresh_interval, executor=database.executor)
    metrics = Metrics()
    authenticator = Authenticator(
        keyring,
        Lockout(limit=settings.auth_failure_limit, window=settings.auth_failure_window, on_lock=metrics.lockouts.inc),
        signed=SignedRequests(
            max_skew=settings.signature_max_skew, public_url=settings.public_url, signin=settings.admin_ui
        ),
    )

    async def detach(key_id: str, fingerprint: str) -> None:
        await database.call(lambda: KeyAdmin(key_store).detach_ollama_key(key_id, fingerprint))
        log.info("key %s: Ollama key %s signed out", key_id, fingerprint)
        await keyring.catch_up()

    limiter = open_limiter(settings.redis_url, fail_closed=settings.redis_fail_closed)
    ledger = UsageLedger(lambda: usage_store, flush_interval=settings.usage_flush_interval, executor=database.executor)

    resolver = ClientResolver(settings.trusted_proxies)
    # Request bodies: the bytes held at once, and where large ones are parsed (another process).
    budget = BodyBudget(settings.max_buffered_bytes, wait=settings.queue_timeout)
    bodies = BodyReader()
    traffic = LiveTraffic()
    forwarded = ForwardedRoutes(
        resolver=resolver,
        max_body_bytes=settings.max_body_bytes,
        cors=Cors(settings.cors_origins) if settings.cors_origins else None,
        # The order requests pass through: who is calling, then what they may reach.
        policies=[
            AuthPolicy(authenticator),
            # Ollama's account routes, answered here for the gateway's own keys.
            AccountPolicy(allow_cloud=settings.allow_cloud, detach=detach),
            RoutePolicy(allow_cloud=settings.allow_cloud),
            RequestBodyPolicy(max_body_bytes=settings.max_body_bytes, budget=budget, reader=bodies),
            ModelPolicy(allow_cloud=settings.allow_cloud),
            StreamUsagePolicy(),
            LimitPolicy(
                limiter,
                defaults=Quota(**{name: getattr(settings, f"default_{name}") for name in QUOTA_NAMES}),
                default_completion_tokens=settings.default_max_tokens,
            ),
            # Counts, per key, what waits for a server from here (never refuses).
            traffic.arrivals,
            # Last: which server, and a fair slot there, only for a request that passed the rest.
            RoutingPolicy(fleet),
            # Counts, per key, what holds its slot: "in flight" everywhere (never refuses).
            traffic,
        ],
        # Every finished request, once, to each of these.
        sinks=[
            AccessLog(fmt=chosen_format(settings.log_format, sys.stdout), log_prompts=settings.log_prompts),
            metrics,
            ledger,
            traffic,
        ],
    )
    # Handed to the server through the lifespan state: it refuses connections near the fd limit.
    connections = ConnectionGuard(on_refused=metrics.connections_refused.inc, limit=descriptor_limit())
    metrics.track_in_flight(lambda: traffic.in_flight)
    metrics.track_fleet(fleet)

    checks: dict[str, Check] = {
        "upstream": fleet_check(fleet),
        "database": database_check(database),
    }
    if settings.redis_url:
        checks["redis"] = limiter_check(limiter)

    listening = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, object]]:
        await database.call(database.open)
        await keyring.start()
        # Shared with other replicas: their key changes are announced, acted on here at once.
        notices = KeyNotices(keyring.catch_up)
        changes_heard = (
            asyncio.get_running_loop().create_task(
                database.listen(KEYS_CHANNEL, notices.notice, reconnected=notices.reconnected)
            )
            if isinstance(database, PostgresDatabase)
            else None
        )
        await ledger.start()
        await limiter.start()
        await fleet.start()
        # In the background: a slow upstream must not hold up the listener.
        report = asyncio.get_running_loop().create_task(
            report_start(
                listening,
                fleet,
                keyring,
                database=describe(database),
                setting=_servers_setting(settings),
                wait=min(settings.connect_timeout, READY_TIMEOUT),
            )
        )
        try:
            yield {CONNECTION_GUARD: connections}
        finally:
            background = [task for task in (report, changes_heard) if task is not None]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await notices.close()
            # Requests have drained by now: write the last usage counts, then close. Each part is
            # closed even when one before it fails: a broken database must not leave sockets open.
            async with contextlib.AsyncExitStack() as closing:
                closing.push_async_callback(database.aclose)  # after every part that writes to it
                for part in (fleet, keyring, limiter, ledger, bodies):  # closed last to first
                    closing.push_async_callback(part.close)

    api = _fastapi(lifespan=lifespan)
    api.include_router(health_router(checks, fleet))
    metrics_app = _fastapi()
    if settings.metrics_address:
        metrics_app.include_router(metrics_router(metrics, None))
    else:
        api.include_router(metrics_router(metrics, admin_scope(authenticator, resolver)))

    admin: ASGIApp | None = None
    if settings.admin_ui:
        admin = admin_app(
            AdminSources(
                keys=key_store,
                usage=usage_store,
                run=database.call,
                pending=authenticator.pending,
                keys_changed=keyring.catch_up,
                traffic=traffic,
                queue=lambda: queue_totals(fleet.states()),
                # A watched fleet's states are current; one server's are asked now (Fleet.solo).
                upstreams=fleet.states if fleet.solo is None else asked_now(fleet.states, checks["upstream"]),
            ),
            guard=admin_scope(authenticator, resolver),
            resolver=resolver,
            audit=AuditLog(fmt=chosen_format(settings.log_format, sys.stdout)),
        )
        if not settings.admin_address:
            api.mount("/admin", admin)
    return Gateway(
        api,
        forwarded,
        metrics,
        metrics_app,
        admin if settings.admin_address else None,
        close_usage=ledger.close,
        listening=listening,
    )


def _stores(database: AnyDatabase) -> tuple[ManagedKeyStore, ReportStore]:
    """The key and usage stores of the backend chosen."""
    if isinstance(database, PostgresDatabase):
        return PostgresKeyStore(database), PostgresUsageStore(database)
    return SqliteKeyStore(database), SqliteUsageStore(database)


def upstream_client(settings: Settings, url: str, *, max_connections: int | None = None) -> Upstream:
    """The HTTP client for one server, as settings configure it."""
    return open_upstream(
        settings.upstream_client,
        url,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout or None,
        write_timeout=settings.write_timeout or None,
        max_connections=max_connections or settings.upstream_max_connections,
    )


def _fastapi(lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    api = FastAPI(
        title="ollama-gateway", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    install_error_handlers(api)
    return api


def _servers_setting(settings: Settings) -> str:
    """The variable the servers come from, for lines that ask the operator to check it."""
    if settings.upstreams_file:
        return "GATEWAY_UPSTREAMS_FILE"
    return "GATEWAY_UPSTREAMS" if settings.upstreams else "GATEWAY_UPSTREAM_URL"
