"""What was actually on in the gateway under test, found by probing it rather than assumed."""

from __future__ import annotations

import asyncio
import json

from bench.gateway import LIMITS, GatewayServer
from bench.load import fetch
from bench.payloads import Target, small_chat

PROBES = 5
LOG_SETTLE = 0.3  # access records are written after the answer leaves


async def probe(gateway: GatewayServer, target: Target) -> list[str]:
    features = [gateway.key_note]
    if gateway.key is not None:
        anonymous = Target(target.name, target.host, target.port)
        refused = await fetch(anonymous, small_chat(anonymous, "/api/chat"))
        verdict = "refused" if refused.status in (401, 403) else "NOT refused"
        features.append(f"auth: a request without the key got {refused.status} ({verdict})")
        await asyncio.sleep(LOG_SETTLE)

    lines_before = len(_lines(gateway))
    for _ in range(PROBES):
        reply = await fetch(target, small_chat(target, "/api/chat"))
        if reply.status != 200 or reply.error is not None:
            raise RuntimeError(f"the gateway answered a keyed /api/chat with {reply.status} {reply.error or ''}")
    await asyncio.sleep(LOG_SETTLE)
    lines = _lines(gateway)[lines_before:]
    record = _last_record(lines)
    if not lines:
        features.append("access log: no per-request output seen (log level info)")
    else:
        form = "JSON" if record else "text"
        features.append(f"access log: {len(lines) / PROBES:g} {form} line(s) per request (log level info)")

    tokens = {name: value for name, value in (record or {}).items() if name.endswith("_tokens")}
    if tokens:
        counted = ", ".join(f"{name}={value}" for name, value in tokens.items())
        features.append(f"usage accounting: tokens counted per request (access record of a probe: {counted})")
    else:
        features.append("usage accounting: no token counts seen in the access record")
    if "usage" in gateway.commands:
        features.append("usage accounting: the gateway has a `usage` command (its records are not inspected)")

    names = {name for name, _ in reply.headers or []}
    rate_headers = any(name.startswith((b"x-ratelimit", b"ratelimit")) for name in names)
    configured = ", ".join(f"{name}={value}" for name, value in LIMITS.items())
    features.append(f"limits in the environment: {configured}; rate-limit headers in answers: {rate_headers}")
    features.append(f"gateway commands: {', '.join(gateway.commands) or 'unknown'}")
    return features


def _lines(gateway: GatewayServer) -> list[str]:
    # The access log alone: the gateway's own lines (start-up report, warnings) go to stderr.
    return gateway.child.stdout().splitlines()


def _last_record(lines: list[str]) -> dict[str, object] | None:
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None
