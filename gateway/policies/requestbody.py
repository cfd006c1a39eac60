"""Reads the request body once, where the model it names must be checked, and reads it the way
Ollama will: every later policy (permissions, limits, the usage rewrite) reads ``flow.json``.

It runs after authentication, so nobody without a key can make the gateway buffer a body. Each
body takes its bytes from the process's ``BodyBudget`` before it is read and gives them back when
its request is over, so bodies held at once never pass ``GATEWAY_MAX_BUFFERED_BYTES``; what the
gateway needs of it is read by the ``BodyReader`` (large bodies in a worker process).
"""

from __future__ import annotations

from gateway.errors import GatewayBusy
from gateway.flow import Flow
from gateway.policies.bodyreader import BodyBudget, BodyReader
from gateway.proxy.headers import header
from gateway.proxy.inbound import Inbound


class RequestBodyPolicy:
    def __init__(self, *, max_body_bytes: int, budget: BodyBudget, reader: BodyReader) -> None:
        self._max_body = max_body_bytes
        self._budget = budget
        self._reader = reader

    async def admit(self, flow: Flow, inbound: Inbound) -> int:
        """The bytes taken from the budget (given back by ``finish``)."""
        flow.caller()  # never buffer a body for someone without a key
        if not flow.route.json_body:
            return 0
        length = header(flow.headers, b"content-length")
        # Checked against the limit before any policy ran (a larger one is a 413 by now).
        declared = int(length) if length is not None and length.isdigit() else None
        taken = 0
        try:
            if declared is not None:
                try:
                    await self._budget.take(declared)
                except GatewayBusy:
                    # Read and dropped, so the client gets the 503: a close with its body unread
                    # would reset the connection, and the answer with it.
                    async for _ in inbound.stream(self._max_body):
                        pass
                    raise
                taken = declared
            pieces = []
            async for piece in inbound.stream(self._max_body):
                if declared is None:  # chunked: taken as it arrives
                    await self._budget.take(len(piece))
                    taken += len(piece)
                pieces.append(piece)
            # Most bodies arrive in one piece: no copy then.
            body = flow.body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            # An empty body names no model: Ollama's own error (400 "missing request body", or 405
            # for a wrong method) is the right answer, so the request goes on unparsed.
            if body and not body.isspace():
                flow.json = await self._reader.read(body)
        except BaseException:  # cleanup only: a request that stops here holds nothing
            self._budget.give_back(taken)
            raise
        return taken

    def finish(self, flow: Flow, admitted: int) -> None:
        self._budget.give_back(admitted)
