"""What the gateway says once it has started: where it forwards, whether that answers, and how to
make a first key. A gateway with no Ollama behind it, or no key to let anyone in, must not look
exactly like a healthy one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from gateway.errors import GatewayError
from gateway.fleet import Fleet
from gateway.keys.keyring import Keyring
from gateway.proxy.upstream import Upstream, fetch_version

log = logging.getLogger("gateway")

PROGRAM = "ollama-gateway"

# How soon one server that did not answer at start-up is asked again, backing off to the most.
RETRY_FIRST = 0.5
RETRY_MAX = 10.0


def own_command() -> str:
    """The command that runs this gateway's CLI, as a shell can run it from here: the bare name
    when it is on PATH and is this program, else this program's path (``.venv/bin/ollama-gateway``
    after ``make run``), else this interpreter with ``-m gateway``."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name == PROGRAM:
        found = shutil.which(PROGRAM)
        if found and os.path.realpath(found) == os.path.realpath(program):
            return PROGRAM
        return shlex.quote(os.path.abspath(program))
    return f"{shlex.quote(sys.executable)} -m gateway"


async def report_start(
    listening: asyncio.Event, fleet: Fleet, keyring: Keyring, *, database: Path | str, setting: str, wait: float
) -> None:
    """The start-up lines, once the server listens (``listening``), in this order: the database,
    each server, the first-key hint; then, for one server that did not answer, a line once it does
    (a fleet's watchers say that for each of its servers). ``setting``: the variable that names
    the servers."""
    # One server goes unnamed (``Fleet.solo``): its name is only its address.
    named = fleet.solo is None
    # Asked meanwhile, so that waiting for the listener costs nothing.
    asked = asyncio.gather(
        *(
            _upstream_line(
                member.client, f"{member.name} ({member.spec.url})" if named else member.spec.url, setting, wait
            )
            for member in fleet.members
        )
    )
    try:
        await listening.wait()
        log.info("keys and usage are in the database %s", database)
        lines = await asked
    finally:
        asked.cancel()  # stopped before the listener was up: ask no more
    for line in lines:
        log.log(*line)
    if not keyring.has_usable_key():
        log.warning(
            "no API key exists yet, so every request gets 401: create one with `%s keys create <name>`", own_command()
        )
    if fleet.solo is not None and lines[0][0] != logging.INFO:
        await _until_it_answers(fleet.solo.client, fleet.solo.spec.url, wait)


async def _until_it_answers(upstream: Upstream, url: str, wait: float) -> None:
    """Ask again, backing off up to ``RETRY_MAX`` seconds, until it answers (cancelled at shutdown)."""
    delay = RETRY_FIRST
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
        with contextlib.suppress(GatewayError, TimeoutError):
            async with asyncio.timeout(wait):
                status, body = await fetch_version(upstream)
            if status == 200:
                log.info("%s answers now: Ollama %s", url, _version(body))
                return


async def _upstream_line(upstream: Upstream, url: str, setting: str, wait: float) -> tuple[int, str]:
    # A failing server's line names the setting to check too.
    where = f"{url} ({setting})"
    try:
        async with asyncio.timeout(wait):
            status, body = await fetch_version(upstream)
    except GatewayError as error:
        return logging.WARNING, f"forwarding to {where}, which does not answer ({error.message}): requests get 502"
    except TimeoutError:
        return logging.WARNING, f"forwarding to {where}, which did not answer /api/version within {wait:g} s"
    if status != 200:
        return logging.WARNING, f"forwarding to {where}, which answered /api/version with status {status}"
    return logging.INFO, f"forwarding to {url}: Ollama {_version(body)} answered"


def _version(body: bytes) -> str:
    try:
        value = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return "(unknown version)"
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 64 else "(unknown version)"
