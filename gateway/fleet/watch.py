"""Keeping each server's state current: its version, models and loaded models, asked in the
background; a server that does not answer is asked again sooner, backing off to the interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.errors import GatewayError
from gateway.fleet.member import Member, State, model_keys, version_of
from gateway.upstream import fetch

log = logging.getLogger("gateway")

_LISTING_LIMIT = 16 * 1024 * 1024
_FIRST_RETRY = 0.5


async def refresh(member: Member, wait: float) -> bool:
    """Ask ``member`` for its version, models and loaded models; mark it up or down."""
    try:
        async with asyncio.timeout(wait):
            status, body = await fetch(member.client, "/api/version")
            if status != 200:
                raise ValueError(f"/api/version answered {status}")
            version = version_of(body)
            tags_status, tags = await fetch(member.client, "/api/tags", limit=_LISTING_LIMIT)
            ps_status, ps = await fetch(member.client, "/api/ps", limit=_LISTING_LIMIT)
            if tags_status != 200 or ps_status != 200:
                raise ValueError(f"/api/tags or /api/ps answered {tags_status if tags_status != 200 else ps_status}")
            models, loaded = model_keys(tags), set(model_keys(ps))
    except (GatewayError, ValueError, TimeoutError) as error:
        member.mark_down(
            error.message if isinstance(error, GatewayError) else str(error) or f"no answer within {wait:g} s"
        )
        return False
    member.mark_up(version, models, loaded)
    return True


async def watch(member: Member, wake: asyncio.Event, *, interval: float, wait: float) -> None:
    """Refresh ``member`` every ``interval`` seconds, at once when woken, sooner while it is down."""
    retry = min(_FIRST_RETRY, interval)
    while True:
        wake.clear()
        before = member.state
        up = await refresh(member, wait)
        if member.state is not before and before is not State.UNKNOWN:
            # Changes only: the start-up lines have said how each server answered first.
            if up:
                log.info("upstream %s is up again: Ollama %s", member.name, member.version or "(unknown version)")
            else:
                log.warning("upstream %s is down: %s", member.name, member.reason)
        if up:
            delay, retry = interval, min(_FIRST_RETRY, interval)
        else:
            delay, retry = retry, min(retry * 2, interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()
