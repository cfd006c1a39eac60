"""Keeping each server's state current: its version, models and loaded models, asked in the
background; a server that does not answer is asked again sooner, backing off to the interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.errors import GatewayError
from gateway.fleet.member import Member, model_keys, version_of
from gateway.ollama.listjson import LIMIT
from gateway.proxy.upstream import fetch

log = logging.getLogger("gateway")

_FIRST_RETRY = 0.5


async def refresh(member: Member, wait: float) -> bool:
    """Ask ``member`` for its version, models and loaded models; mark it up or down.

    Returns whether it answered. Logs only changes between up and down: the start-up lines have
    said how each server answered first.
    """
    try:
        async with asyncio.timeout(wait):
            status, body = await fetch(member.probe, "/api/version")
            if status != 200:
                raise ValueError(f"/api/version answered {status}")
            version = version_of(body)
            tags_status, tags = await fetch(member.probe, "/api/tags", limit=LIMIT)
            ps_status, ps = await fetch(member.probe, "/api/ps", limit=LIMIT)
            if tags_status != 200 or ps_status != 200:
                raise ValueError(f"/api/tags or /api/ps answered {tags_status if tags_status != 200 else ps_status}")
            models, loaded = model_keys(tags), set(model_keys(ps))
    except (GatewayError, ValueError, TimeoutError) as error:
        reason = error.message if isinstance(error, GatewayError) else str(error) or f"no answer within {wait:g} s"
        if member.mark_down(reason):
            log.warning("upstream %s is down: %s", member.name, member.reason)
        return False
    if member.mark_up(version, models, loaded):
        log.info("upstream %s is up again: Ollama %s", member.name, version or "(unknown version)")
    return True


async def watch(member: Member, wake: asyncio.Event, *, interval: float, wait: float) -> None:
    """Refresh ``member`` every ``interval`` seconds, at once when woken, sooner while it is down."""
    retry = min(_FIRST_RETRY, interval)
    while True:
        wake.clear()
        try:
            up = await refresh(member, wait)
        except Exception as error:
            # Whatever went wrong, the watcher must go on: one that dies freezes its server's state.
            log.exception("upstream %s: checking it failed", member.name)
            member.mark_down(f"checking it failed: {type(error).__name__}")
            up = False
        if up:
            delay, retry = interval, min(_FIRST_RETRY, interval)
        else:
            delay, retry = retry, min(retry * 2, interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()
