"""``ollama-gateway upstreams``: the Ollama servers behind the gateway, as they answer now.

Each configured server is asked directly (version, models, loaded models), the same questions
the running gateway asks; the running gateway's ``/readyz`` adds its own view: what it has in
flight and queued on each server. A gateway that does not answer leaves those columns empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx

from gateway.app import upstream_client
from gateway.fleet import Fleet
from gateway.fleet.config import fleet_specs
from gateway.settings import Settings

_COLUMNS = ("name", "state", "version", "in_flight", "queued", "models", "loaded")


def add_commands(commands: Any) -> None:
    upstreams = commands.add_parser(
        "upstreams",
        help="show the Ollama servers behind the gateway",
        description="State, version, models and loaded models of each server; in flight and queued "
        "as the running gateway counts them.",
    )
    upstreams.add_argument(
        "--gateway", metavar="URL", help="the running gateway to ask (default: GATEWAY_HOST:GATEWAY_PORT)"
    )
    upstreams.add_argument("--json", action="store_true", help="print JSON")
    upstreams.set_defaults(handler=_show)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    rows, note = asyncio.run(_collect(settings, args.gateway or _own_address(settings)))
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        _table(rows)
    if note:
        print(note, file=sys.stderr)
    return 0 if any(row["state"] == "up" for row in rows) else 1


async def _collect(settings: Settings, gateway: str) -> tuple[list[dict[str, object]], str]:
    specs = fleet_specs(settings.upstream_url, settings.upstreams, settings.upstreams_file)
    clients = [upstream_client(settings, spec.url, max_connections=2) for spec in specs]
    fleet = Fleet(
        [(spec, client, client) for spec, client in zip(specs, clients, strict=True)],
        concurrency=0,
        queue_timeout=1,
        refresh_interval=settings.upstream_refresh_interval,
        probe_timeout=settings.connect_timeout + 5,
    )
    try:
        solo = specs[0].name if len(specs) == 1 else None
        _, (counts, note) = await asyncio.gather(fleet.refresh_now(), _gateway_view(gateway, solo))
    finally:
        await fleet.close()
    rows: list[dict[str, object]] = []
    for state in fleet.states():
        seen = counts.get(str(state["name"]), {})
        rows.append(
            {
                "name": state["name"],
                "url": next(spec.url for spec in specs if spec.name == state["name"]),
                "state": state["state"],
                "reason": state["reason"],
                "version": state["version"],
                "in_flight": seen.get("in_flight"),
                "queued": seen.get("queued"),
                "models": state["models"],
                "loaded": state["loaded"],
            }
        )
    return rows, note


async def _gateway_view(url: str, solo: str | None) -> tuple[dict[str, dict[str, object]], str]:
    """Each server's load as the running gateway counts it (``solo``: the name of the one server
    a gateway in front of one server counts, unnamed, in ``/readyz``'s ``upstream``)."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = (await client.get(url.rstrip("/") + "/readyz")).json()
        upstreams = answer.get("upstreams") or ({solo: answer["upstream"]} if solo and "upstream" in answer else {})
        if not isinstance(upstreams, dict) or not all(isinstance(load, dict) for load in upstreams.values()):
            raise TypeError
    except (httpx.HTTPError, ValueError, AttributeError, TypeError, KeyError):
        return {}, f"(in flight, queued: the gateway at {url} did not answer /readyz)"
    return upstreams, ""


def _own_address(settings: Settings) -> str:
    # A gateway listening on every interface is asked on loopback.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


def _table(rows: list[dict[str, object]]) -> None:
    cells = [
        [
            _cell(row["name"]),
            _cell(row["state"]) + (f" ({row['reason']})" if row["reason"] else ""),
            _cell(row["version"]),
            _cell(row["in_flight"]),
            _cell(row["queued"]),
            _cell(row["models"]),
            _cell(row["loaded"]),
        ]
        for row in rows
    ]
    header = ["NAME", "STATE", "VERSION", "IN FLIGHT", "QUEUED", "MODELS", "LOADED"]
    widths = [max(len(line[index]) for line in [header, *cells]) for index in range(len(header))]
    for line in [header, *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)
