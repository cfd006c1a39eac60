"""One forwarded exchange, from first byte in to last byte out: what policies and sinks share.

A ``Flow`` is created per request, filled in as the request passes each stage, and observes the
relayed response (it is the core's ``Observer``). When the exchange is over, one ``RequestRecord``
is built from it and handed to every sink exactly once: the access log, metrics and usage
accounting all read the same terminal record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import GatewayError
from gateway.keys.principal import Principal
from gateway.ollama.bodyfacts import BodyFacts
from gateway.ollama.streams import Usage, UsageReader
from gateway.ollama.surfaces import Route, RouteClass
from gateway.proxy.clientaddr import ClientAddress
from gateway.proxy.headers import Headers, header
from gateway.proxy.relay import BodyTransform
from gateway.proxy.upstream import Outbound, Upstream, UpstreamResponse


class Rewrite(Protocol):
    """Rewrites a whole (small) answer before the client sees any of it, so that it goes out with
    its exact length, and a failure while reading it is still an error status (a listing filtered
    per key)."""

    async def answer(self, response: UpstreamResponse) -> UpstreamResponse: ...


class Destination(Protocol):
    """Where a flow's request goes, as the routing policy chose it. The forwarder sends it to
    ``upstream`` and asks between attempts whether it goes once more, elsewhere: the policy
    decides failover before the core is called again. It holds no reference to the flow (it is
    handed one), so the two go together when the exchange is over."""

    @property
    def upstream(self) -> Upstream: ...

    async def failed(self, flow: Flow, request: Outbound, error: GatewayError) -> bool:
        """``upstream`` did not take the request: True when it goes to the (new) ``upstream``."""

    async def answered(self, flow: Flow, request: Outbound, response: UpstreamResponse) -> UpstreamResponse | None:
        """What of ``upstream``'s answer the client gets; None when the request goes to the (new)
        ``upstream`` instead."""


@dataclass(eq=False, slots=True)
class Flow:
    request_id: str
    method: str
    path: str
    route: Route
    client: ClientAddress
    headers: Headers
    started: float = field(default_factory=time.perf_counter)
    wall_started: float = field(default_factory=time.time)
    principal: Principal | None = None
    # The query as it goes upstream (a signed request's ``ts`` is removed by authentication).
    query: bytes = b""
    # Why authentication refused (for the operator's log), the key id it could read, and the
    # fingerprint of the Ollama public key that signed the request (whether or not it was let in).
    auth: str | None = None
    claimed_key_id: str | None = None
    public_key: str | None = None
    # A JSON body the gateway answers with itself (200) instead of forwarding (``/api/me``).
    answer: bytes | None = None
    model: str | None = None
    status: int = 0
    upstream_status: int | None = None
    forwarded_at: float | None = None
    first_byte_at: float | None = None
    finished_at: float | None = None
    queue_wait: float = 0.0
    streaming: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    # ok | client_disconnect | upstream_error | upstream_timeout | shutdown | the refusing error's outcome
    outcome: str = "ok"
    # The request body, once read (by RequestBodyPolicy); forwarded instead of streaming it. A
    # policy that rewrites it replaces it here.
    body: bytes | None = None
    # What the gateway read of the body, as Ollama's decoder will read it; None when not read or empty.
    json: BodyFacts | None = None
    reader: UsageReader | None = None
    # Where the request goes (set by routing), the server's name for the record, and the server
    # it left when that one could not take it.
    destination: Destination | None = None
    upstream_name: str | None = None
    failed_over_from: str | None = None
    # The answer rewritten whole before it is relayed (a filtered listing); then, rewrites of the
    # response body as it streams, applied in this order (a stripped frame).
    rewrite: Rewrite | None = None
    transforms: list[BodyTransform] = field(default_factory=list)
    # Extra response headers policies want the client to see.
    response_headers: Headers = field(default_factory=list)
    _usage: Usage | None = None

    # Observer hooks, called by the relay.
    def response_started(self, status: int, headers: Headers, streaming: bool) -> Callable[[bytes], None] | None:
        self.first_byte_at = time.perf_counter()
        self.upstream_status = self.status = status
        self.streaming = streaming
        if self.route.route_class is not RouteClass.INFERENCE:
            return None
        self.reader = UsageReader(header(headers, b"content-type"))
        return self.reader.feed

    def sent(self, size: int) -> None:
        self.bytes_out = size

    def failed(self, error: GatewayError) -> None:
        self.fail(error)

    def fail(self, error: GatewayError) -> None:
        # Only its outcome: the exception's traceback holds the frames that hold this flow, and a
        # cycle would keep every failed request's objects until the collector's next full pass.
        self.outcome = error.outcome

    def caller(self) -> Principal:
        """Who is calling; policies that need it run after authentication, or this is a bug."""
        if self.principal is None:
            raise RuntimeError(f"{self.route.name}: a policy that needs the caller ran before authentication")
        return self.principal

    @property
    def usage(self) -> Usage | None:
        """Tokens used, once the response is over (None where no tokens are involved)."""
        if self._usage is None and self.reader is not None:
            self._usage = self.reader.result()
        return self._usage

    @property
    def overhead(self) -> float:
        """Seconds the gateway itself spent before forwarding, excluding time queued."""
        end = self.forwarded_at if self.forwarded_at is not None else (self.finished_at or time.perf_counter())
        return max(end - self.started - self.queue_wait, 0.0)
