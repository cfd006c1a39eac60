"""Running the gateway under uvicorn (one process, or several workers), with the settings that
streaming needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.database import open_database
from gateway.fleet.config import fleet_specs
from gateway.routes.dispatch import Gateway
from gateway.runtime.http_protocol import GatewayHttpProtocol
from gateway.runtime.listeners import admin_listener, metrics_listener, serve_all
from gateway.runtime.logs import configure_logging
from gateway.runtime.shutdown import GatewayServer
from gateway.runtime.tuning import prepare_process
from gateway.settings import Settings


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        # uvloop when installed (uvicorn[standard]); uvicorn's httptools parser, bodies uncopied.
        "loop": "auto",
        "http": GatewayHttpProtocol,
        "lifespan": "on",
        # Forwarded headers are handled by the gateway itself, from configured peers only.
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "log_level": settings.log_level,
        # On SIGTERM: stop accepting, let in-flight requests (streams too) finish for this long. One
        # process runs GatewayServer, which ends them itself then and moves this deadline behind.
        "timeout_graceful_shutdown": round(settings.shutdown_grace),
        "timeout_keep_alive": 75,
    }


def uvicorn_config(settings: Settings, app: Gateway) -> uvicorn.Config:
    return uvicorn.Config(app, **_options(settings))


def app_from_environment() -> Gateway:
    """The app factory each worker process calls when GATEWAY_WORKERS > 1."""
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    # uvicorn's own server signals nothing once it listens: its start-up lines come as they come.
    app.listening.set()
    prepare_process()
    return app


def _serve_workers(settings: Settings) -> int:
    # Each worker builds its own app from the environment; limits are shared through Redis
    # (settings refuse several workers without it).
    uvicorn.run(
        "gateway.runtime.server:app_from_environment", factory=True, workers=settings.workers, **_options(settings)
    )
    return 0


def check_database(settings: Settings) -> None:
    """Open (create, migrate) and write the database before anything listens: a file that cannot
    be used (read-only, not a database, a folder that cannot be made) raises ``DatabaseUnusable``,
    one line naming the path and the reason, instead of failing uvicorn's start-up with a traceback."""
    database = open_database(settings.database_url, pool_size=1)
    try:
        database.open(writable=True)
    finally:
        database.close()


def serve(settings: Settings, *, warnings: Sequence[str] = ()) -> int:
    configure_logging(settings.log_level)
    for line in warnings:
        logging.getLogger("gateway").warning("%s", line)
    check_database(settings)
    if settings.workers > 1:
        # Each worker reads the upstream list itself: a bad one must stop start-up here, once.
        fleet_specs(settings.upstream_url, settings.upstreams, settings.upstreams_file)
        return _serve_workers(settings)
    app = create_app(settings)
    config = uvicorn_config(settings, app)
    main = GatewayServer(config, app, grace=settings.shutdown_grace)
    side = metrics_listener(settings, app)
    config.load()
    prepare_process()
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        try:
            runner.run(serve_all(main, side, admin_listener(settings, app)))
        except KeyboardInterrupt:
            # uvicorn re-raises the Ctrl-C it has already handled (shut down cleanly): no
            # traceback for that; 130 is what a shell reports for a command ended by SIGINT.
            return 130
    return 0 if main.started else 1
