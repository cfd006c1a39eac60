"""The admin surface: a JSON API under ``/admin/api`` and a web page at ``/admin/``.

``admin_app`` builds it as one ASGI app, mounted at ``/admin`` on the main listener or served on
its own (``GATEWAY_ADMIN_ADDRESS``). Layers, outermost first: the audit line, the security headers
and body bound, the admin-scope gate, then FastAPI (routes, errors in the ``/api`` dialect).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp

from gateway import __version__
from gateway.admin.audit import Audit
from gateway.admin.connect import connect_router
from gateway.admin.gate import Gate, admitted
from gateway.admin.hardening import Hardening
from gateway.admin.keys import keys_router
from gateway.admin.lastresort import LastResort
from gateway.admin.live import QueueState, Upstreams, live_router
from gateway.admin.openapi import described
from gateway.admin.static import static_router
from gateway.admin.traffic import LiveTraffic
from gateway.admin.usage import usage_router
from gateway.database.sqlite import Runner
from gateway.keys.pending import PendingAccess
from gateway.observe.accesslog import AuditLog
from gateway.proxy.clientaddr import ClientResolver
from gateway.routes.guard import Guard
from gateway.routes.responses import install_error_handlers

if TYPE_CHECKING:
    from gateway.keys.store import ManagedKeyStore
    from gateway.usage.store import ReportStore

__all__ = ["AdminSources", "LiveTraffic", "admin_app"]


@dataclass(frozen=True, slots=True)
class AdminSources:
    """Where the admin surface reads and writes; each is built by ``create_app``."""

    keys: ManagedKeyStore
    usage: ReportStore
    # Where their blocking work runs (the database's own thread).
    run: Runner
    # Ollama public keys that asked for access (the connect view).
    pending: PendingAccess
    # Awaited after a key changes, so this server acts on it before the answer goes out.
    keys_changed: Callable[[], Awaitable[None]]
    traffic: LiveTraffic
    queue: QueueState
    upstreams: Upstreams


def admin_app(sources: AdminSources, *, guard: Guard, resolver: ClientResolver, audit: AuditLog) -> ASGIApp:
    acting = admitted(guard)
    api = FastAPI(
        title="ollama-gateway admin API",
        version=__version__,
        description="Keys, usage and live traffic. Every route needs an API key with the admin scope.",
        # Its paths are below /admin, wherever the app is served.
        servers=[{"url": "/admin"}],
        openapi_url=None,
        # Exact paths only: nothing answers for a path it was not given.
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(api)
    # Inside FastAPI's own handlers, so an unforeseen failure is answered in the /api dialect.
    api.add_middleware(LastResort)
    api.include_router(keys_router(sources.keys, sources.run, acting, sources.keys_changed), prefix="/api")
    api.include_router(usage_router(sources.usage, sources.run, acting), prefix="/api")
    api.include_router(connect_router(sources.pending, sources.keys, sources.run, acting), prefix="/api")
    api.include_router(
        live_router(
            sources.traffic,
            queue=sources.queue,
            upstreams=sources.upstreams,
            admin=acting,
        ),
        prefix="/api",
    )
    schema = described(api.openapi())

    @api.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(acting)])
    async def openapi() -> dict[str, object]:
        return schema

    api.include_router(static_router())
    return Audit(Hardening(Gate(api, guard=guard)), log=audit, resolver=resolver)
