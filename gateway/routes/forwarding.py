"""The forwarded routes: path safety, the route table, then the policies around the relay.

Order: path safety -> route table -> policies (in the order ``create_app`` lists them: who calls,
route scope, the body, model permissions, limits, routing) -> send -> relay. The routing policy
names where the request goes (``flow.destination``); it is sent there, and between attempts the
destination decides whether it goes once more, elsewhere. Every flow ends in exactly one response
(relayed or refused) and one terminal record.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import BodyTooLarge, GatewayError
from gateway.flow import Destination, Flow
from gateway.observe.record import RequestRecord, record_of
from gateway.ollama.surfaces import classify, unchecked
from gateway.proxy.clientaddr import ClientResolver
from gateway.proxy.headers import Headers, header, upstream_request_headers
from gateway.proxy.inbound import DEPARTURES_EXTENSION, ClientDisconnected, Inbound
from gateway.proxy.relay import WRITER_EXTENSION, Chain, relay
from gateway.proxy.upstream import Outbound, UpstreamResponse
from gateway.routes.cors import Cors
from gateway.routes.drain import Drain, Stop
from gateway.routes.paths import checked_path, checked_query
from gateway.routes.requestid import request_id
from gateway.routes.responses import ErrorResponse

Admitted = TypeVar("Admitted")


class Policy(Protocol[Admitted]):
    async def admit(self, flow: Flow, inbound: Inbound) -> Admitted:
        """Let the flow through, or raise a GatewayError; what it returns goes to ``finish``."""

    def finish(self, flow: Flow, admitted: Admitted) -> None:
        """The flow is over (called once for every policy whose ``admit`` returned)."""


Sink = Callable[[RequestRecord], None]

_SAFE_PATH_CHARS = "/:@!$&'()*+,;=-._~"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~-]*")


class ForwardedRoutes:
    def __init__(
        self,
        *,
        resolver: ClientResolver,
        max_body_bytes: int,
        cors: Cors | None = None,
        policies: Sequence[Policy[Any]] = (),
        sinks: Sequence[Sink] = (),
    ) -> None:
        self._cors = cors
        self._resolver = resolver
        self._max_body = max_body_bytes
        self.policies = tuple(policies)
        self._sinks = tuple(sinks)
        # Ends the exchanges still open when the server's grace period is over.
        self.drain = Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        rid = request_id(header(headers, b"x-request-id"))
        client = self._resolver.of_scope(scope)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        length = header(headers, b"content-length")
        has_body = (length is not None and length != b"0") or header(headers, b"transfer-encoding") is not None
        extensions = scope.get("extensions") or {}
        inbound = Inbound(receive, has_body=has_body, departures=extensions.get(DEPARTURES_EXTENSION))
        flow = Flow(
            request_id=rid.decode(),
            method=scope["method"],
            path=scope["path"],
            route=unchecked(raw_path),
            client=client,
            headers=headers,
        )
        admitted: list[tuple[Policy[Any], Any]] = []
        stop: Stop | None = None
        try:
            stop = self.drain.enter()
            path = checked_path(raw_path)
            flow.query = checked_query(scope["query_string"])
            flow.route = route = classify(path)
            limit = self._max_body if route.bounded_body else None
            if limit is not None and length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge(f"request body is larger than {limit} bytes")
            origin = header(headers, b"origin")
            if origin is not None and self._cors is not None and self._cors.allows(origin):
                if scope["method"] == "OPTIONS" and header(headers, b"access-control-request-method"):
                    await self._preflight(flow, origin, rid, send)
                    return
                flow.response_headers.extend(self._cors.response_headers(origin))
            # From here on a client that leaves (while queued, or while Ollama works) cancels us.
            inbound.watch()
            for policy in self.policies:
                admitted.append((policy, await policy.admit(flow, inbound)))
                if flow.answer is not None:
                    # A policy answered for Ollama (``/api/me``): nothing is forwarded.
                    await self._answer(flow, flow.answer, rid)(scope, receive, send)
                    return
            plain = path if _PLAIN_PATH.fullmatch(path) else quote(path, safe=_SAFE_PATH_CHARS)
            target = plain + ("?" + flow.query.decode() if flow.query else "")
            outbound = Outbound(
                method=scope["method"],
                target=target,
                headers=upstream_request_headers(
                    headers,
                    forwarded_for=client.forwarded_for.encode(),
                    forwarded_proto=client.proto.encode(),
                    request_id=rid,
                ),
                body=self._body(flow, inbound, has_body, limit),
            )
            destination = flow.destination
            if destination is None:
                raise RuntimeError(f"{route.name}: no policy chose where the request goes")
            flow.forwarded_at = time.perf_counter()
            extra_headers = [(b"x-request-id", rid), _overhead_header(flow), *flow.response_headers]
            response = await _answer(flow, destination, outbound)
            if flow.rewrite is not None:
                response = await flow.rewrite.answer(response)
            await relay(
                response,
                inbound,
                send,
                dialect=route.dialect,
                extra_headers=extra_headers,
                observer=flow,
                stop=stop,
                transform=Chain(flow.transforms) if flow.transforms else None,
                writer=extensions.get(WRITER_EXTENSION),
            )
        except GatewayError as error:
            flow.fail(error)
            inbound.stop()
            await self._refusal(flow, error, rid)(scope, receive, send)
        except ClientDisconnected:
            flow.outcome = "client_disconnect"
        except asyncio.CancelledError:
            shutdown = stop.claim() if stop is not None else None
            if shutdown is not None:
                # Ended by the drain before the relay could say so: a 503 if nothing went out yet.
                flow.fail(shutdown)
                inbound.stop()
                if flow.status == 0:
                    await self._refusal(flow, shutdown, rid)(scope, receive, send)
            elif not inbound.gone:
                raise
            else:
                # Our own cancellation (the client left): absorb it and record the outcome.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                flow.outcome = "client_disconnect"
        finally:
            inbound.stop()
            if inbound.gone and flow.outcome == "ok":
                flow.outcome = "client_disconnect"
            if flow.status == 0 and flow.outcome == "client_disconnect":
                flow.status = 499  # nginx's convention: the client closed the request
            # What the client sent (a body the gateway rewrote is longer or shorter upstream).
            flow.bytes_in = inbound.bytes_in
            flow.finished_at = time.perf_counter()
            for policy, token in reversed(admitted):
                policy.finish(flow, token)
            record = record_of(flow)
            for sink in self._sinks:
                sink(record)
            if stop is not None:
                # Last: whoever waits for the drain finds this exchange's record written.
                self.drain.leave(stop)

    def _body(self, flow: Flow, inbound: Inbound, has_body: bool, limit: int | None) -> bytes | AsyncIterable[bytes]:
        if flow.body is not None:
            return flow.body
        if not has_body:
            return b""
        return inbound.stream(limit)

    async def _preflight(self, flow: Flow, origin: bytes, rid: bytes, send: Send) -> None:
        assert self._cors is not None
        flow.status = 204
        headers = [*self._cors.preflight_headers(origin), (b"x-request-id", rid)]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _answer(self, flow: Flow, body: bytes, rid: bytes) -> Response:
        """A JSON answer of the gateway's own, framed as a refusal is (``_refusal``)."""
        response = Response(body, 200, media_type="application/json; charset=utf-8")
        response.raw_headers.extend([(b"x-request-id", rid), _overhead_header(flow), *flow.response_headers])
        flow.status = 200
        flow.bytes_out = len(body)
        return response

    def _refusal(self, flow: Flow, error: GatewayError, rid: bytes) -> ErrorResponse:
        response = ErrorResponse(
            error,
            flow.route.dialect,
            request_id=rid.decode(),
            headers=[(b"x-request-id", rid), _overhead_header(flow), *flow.response_headers],
        )
        flow.status = error.status
        flow.bytes_out = len(response.body)
        return response


async def _answer(flow: Flow, destination: Destination, request: Outbound) -> UpstreamResponse:
    """The answer to relay: the core sends, and the destination decides, before it is called again,
    whether the request goes once more, elsewhere (it fails over once at most)."""
    while True:
        try:
            response = await destination.upstream.send(request)
        except GatewayError as error:
            if await destination.failed(flow, request, error):
                continue
            raise
        answer = await destination.answered(flow, request, response)
        if answer is not None:
            return answer


def _overhead_header(flow: Flow) -> tuple[bytes, bytes]:
    """What the gateway itself cost before forwarding (checks, body read), queueing excluded."""
    return (b"x-gateway-overhead-ms", f"{flow.overhead * 1000:.3f}".encode())
