"""Reads the request body once, where the model it names must be checked, and parses it the way
Ollama will: every later policy (permissions, limits, the usage rewrite) reads ``flow.json``.

It runs after authentication, so nobody without a key can make the gateway buffer a body.
"""

from __future__ import annotations

import asyncio

from gateway.flow import Flow
from gateway.ollama.jsonbody import JsonBody
from gateway.proxy.inbound import Inbound

# Parsing a large body (images are base64 inside it) would stall the event loop.
_PARSE_IN_THREAD = 256 * 1024


class RequestBodyPolicy:
    def __init__(self, *, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        flow.caller()  # never buffer a body for someone without a key
        if not flow.route.json_body:
            return
        body = flow.body = await inbound.read(self._max_body)
        # An empty body names no model: Ollama's own error (400 "missing request body", or 405
        # for a wrong method) is the right answer, so the request goes on unparsed.
        if body.strip():
            big = len(body) > _PARSE_IN_THREAD
            flow.json = await asyncio.to_thread(JsonBody.parse, body) if big else JsonBody.parse(body)

    def finish(self, flow: Flow, admitted: None) -> None:
        pass
