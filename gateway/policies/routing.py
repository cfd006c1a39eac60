"""The routing policy: which server a request goes to, and a fair slot on that server.

It runs last, after the key's limits: a request refused by policy never takes a slot. Inference
requests wait in the chosen server's own fair queue, so a long queue on one server never delays a
request another server can start now. With several servers:

* a request naming a model goes to a usable server that has it (``Fleet.holders``), and fails
  over once, to the next such server, when the first cannot be reached or hangs up before its
  first response byte; after that byte there is no retry (the relay ends the stream instead);
* listings and ``/api/version`` are answered for the whole fleet (``listings.py``);
* model management goes to the server the ``X-Gateway-Upstream`` header names; without it,
  ``/api/pull`` and ``/api/delete`` go to every server (``fanout.py``) and the rest are refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from gateway.errors import (
    BadRequest,
    ModelNotFound,
    UpstreamBusy,
    UpstreamConnectTimeout,
    UpstreamNotReached,
    UpstreamUnavailable,
)
from gateway.fleet import Fleet, Member
from gateway.fleet.fanout import FanOut
from gateway.fleet.listings import Answer, FleetListing
from gateway.fleet.queue import Ticket
from gateway.flow import Flow
from gateway.ollama.models import parse_model
from gateway.ollama.surfaces import RouteClass
from gateway.proxy.headers import UPSTREAM_HEADER, header
from gateway.proxy.inbound import Inbound
from gateway.proxy.upstream import Outbound, UpstreamResponse, read_whole

# Model management: the servers it touched are asked for their models again at once.
_CHANGES_MODELS = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete"})
_TO_EVERY_SERVER = frozenset({"/api/pull", "/api/delete"})
_FLEET_ANSWERS = frozenset({"/api/tags", "/api/ps", "/v1/models", "/api/version"})
# Ollama's own words for a model it does not have, by route (see its handlers).
_EMBED_ROUTES = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
_HELD_LIMIT = 65536


@dataclass(eq=False, slots=True)
class Placement:
    """Where a request runs: its server, its slot there, and every server it touched."""

    member: Member | None
    ticket: Ticket | None = None
    model: str | None = None
    touched: tuple[Member, ...] = ()


class RoutingPolicy:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def admit(self, flow: Flow, inbound: Inbound) -> Placement:
        fleet = self.fleet
        route = flow.route
        if route.route_class in (RouteClass.ADMIN, RouteClass.CLOUD):
            return self._admin(flow, header(flow.headers, UPSTREAM_HEADER))
        if not fleet.several:
            return await self._place(flow, Placement(None), fleet.members[0])
        if route.name in _FLEET_ANSWERS and flow.method == "GET":
            flow.upstream = FleetListing(fleet, route.name)
            flow.upstream_name = "*"
            return Placement(None)
        if flow.model is None:
            member = fleet.least_busy()
            if member is None:
                raise _none_usable(fleet)
            return await self._place(flow, Placement(None), member)
        model = str(parse_model(flow.model))
        holders = fleet.holders(model)
        if not holders and not any(model in member.models for member in fleet.members):
            # Perhaps pulled straight on a server since the last refresh: ask before refusing.
            await fleet.refresh_now()
            holders = fleet.holders(model)
        if not holders:
            # Named as the client spelled it, as Ollama does.
            spelled = _spelled(flow) or flow.model
            if any(model in member.models for member in fleet.members):
                raise _none_usable(fleet, f" that has model '{spelled}'")
            raise _not_found(flow.route.name, spelled)
        return await self._place(flow, Placement(None, model=model), holders[0])

    def finish(self, flow: Flow, placement: Placement) -> None:
        member = placement.member
        self._leave(placement)
        # A Routed upstream and its flow refer to each other: part them so both go at once.
        flow.upstream = None
        inference = flow.route.route_class is RouteClass.INFERENCE
        if member is not None and placement.model is not None and inference and flow.upstream_status == 200:
            # It has it in memory now; the next request for it should prefer this server.
            member.loaded.add(placement.model)
        if flow.route.name in _CHANGES_MODELS and self.fleet.several:
            self.fleet.refresh_soon(placement.touched or None)

    async def _place(self, flow: Flow, placement: Placement, member: Member) -> Placement:
        """Count the request on ``member`` and, for inference, wait for a fair slot there."""
        placement.member = member
        placement.touched = (*placement.touched, member)
        member.routed += 1
        flow.upstream_name = member.name
        if self.fleet.several and flow.upstream is None:
            flow.upstream = Routed(self, flow, placement)
        if member.queue is None or flow.route.route_class is not RouteClass.INFERENCE:
            return placement
        principal = flow.caller()
        queued_at = time.perf_counter()
        try:
            placement.ticket = await member.queue.acquire(principal.key_id, principal.limits.weight or 1)
        except BaseException:
            # Refused or abandoned while queued: it never ran here, and holds nothing.
            member.routed -= 1
            placement.member = None
            flow.upstream = None
            flow.queue_wait += time.perf_counter() - queued_at
            raise
        flow.queue_wait += placement.ticket.waited
        if not any(name == b"x-queue-wait-ms" for name, _ in flow.response_headers):
            flow.response_headers.append((b"x-queue-wait-ms", f"{flow.queue_wait * 1000:.0f}".encode()))
            flow.response_headers.append((b"x-queue-position", str(placement.ticket.position).encode()))
        return placement

    def _leave(self, placement: Placement) -> None:
        member = placement.member
        if member is None:
            return
        member.routed -= 1
        if placement.ticket is not None and member.queue is not None:
            member.queue.release()
        placement.member, placement.ticket = None, None

    async def move(self, flow: Flow, placement: Placement, member: Member) -> None:
        """Fail over: give up the slot on the current server and take one on ``member``."""
        self._leave(placement)
        await self._place(flow, placement, member)

    def _admin(self, flow: Flow, named: bytes | None) -> Placement:
        fleet = self.fleet
        if named is not None and fleet.several:
            name = named.decode("latin-1").strip()
            member = fleet.named(name)
            if member is None:
                raise BadRequest(f"no upstream is named '{name[:100]}' (this gateway has: {_names(fleet)})")
        elif not fleet.several:
            member = fleet.members[0]
        elif flow.route.name in _TO_EVERY_SERVER:
            flow.upstream = FanOut(fleet.members, stream=flow.route.name == "/api/pull" and _streams(flow))
            flow.upstream_name = "*"
            return Placement(None, touched=fleet.members)
        else:
            raise BadRequest(
                f"this gateway fronts several Ollama servers: name one for {flow.route.name} with the "
                f"X-Gateway-Upstream header ({_names(fleet)})"
            )
        member.routed += 1
        flow.upstream_name = member.name
        if fleet.several:
            flow.upstream = member.client
        return Placement(member, touched=(member,))


class Routed:
    """The upstream for one request routed to a server of several.

    A server that cannot be reached (refused, unroutable, no connection in time) is marked down
    and the request goes once to the next server that has the model: it never left the gateway,
    so nothing runs twice. So does one that answers 404 for a model it was listed with (deleted
    behind the gateway's back: no work was done). A server that closes the connection before
    answering is marked down too, but the request is not sent again: it may have been read, and a
    second generation (or pull, or delete) must not run. Nor is a request whose body was streamed.
    """

    def __init__(self, policy: RoutingPolicy, flow: Flow, placement: Placement) -> None:
        self._policy = policy
        self._flow = flow
        self._placement = placement

    async def send(self, request: Outbound) -> UpstreamResponse:
        fleet = self._policy.fleet
        first = self._placement.member
        assert first is not None
        try:
            response = await first.client.send(request)
        except (UpstreamNotReached, UpstreamConnectTimeout) as error:
            fleet.mark_down(first, error.message)
            following = self._next(first, request)
            if following is None:
                raise
        except UpstreamBusy:
            raise
        except UpstreamUnavailable as error:
            fleet.mark_down(first, error.message)
            raise
        else:
            model = self._placement.model
            if response.status != 404 or model is None or (following := self._next(first, request)) is None:
                return response
            held = await _held(response)
            if not _lacks_model(held.content):
                return held
            fleet.forget(first, model)
        self._flow.failed_over_from = first.name
        await self._policy.move(self._flow, self._placement, following)
        try:
            return await following.client.send(request)
        except (UpstreamNotReached, UpstreamConnectTimeout) as error:
            fleet.mark_down(following, error.message)
            raise

    def _next(self, first: Member, request: Outbound) -> Member | None:
        model = self._placement.model
        if model is None or not isinstance(request.body, bytes):
            return None
        return next((member for member in self._policy.fleet.holders(model) if member is not first), None)

    async def aclose(self) -> None:
        pass


async def _held(response: UpstreamResponse) -> Answer:
    """A small error answer, read whole so that it can be looked at before the client sees it."""
    return Answer(response.status, await read_whole(response, _HELD_LIMIT), response.headers)


def _lacks_model(body: bytes) -> bool:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(error, str) and error.startswith("model ") and "not found" in error


def _streams(flow: Flow) -> bool:
    return flow.json is None or flow.json.stream is not False


def _spelled(flow: Flow) -> str | None:
    body = flow.json
    if body is None:
        return None
    return body.string("model") or body.string("name") or None


def _names(fleet: Fleet) -> str:
    return ", ".join(member.name for member in fleet.members)


def _none_usable(fleet: Fleet, what: str = "") -> UpstreamUnavailable:
    return UpstreamUnavailable(f"no upstream{what} is reachable ({fleet.reasons()})")


def _not_found(route: str, model: str) -> ModelNotFound:
    if route in _EMBED_ROUTES:
        return ModelNotFound(f'model "{model}" not found, try pulling it first')
    return ModelNotFound(f"model '{model}' not found")
