"""The routing policy: which server a request goes to, and a fair slot on that server.

It runs last, after the key's limits: a request refused by policy never takes a slot. Inference
requests wait in the chosen server's own fair queue, so a long queue on one server never delays a
request another server can start now. A fleet of one answers everything from its server, as
Ollama alone would (``Fleet.solo``). With several servers:

* a request naming a model goes to a usable server that has it (``Fleet.holders``), and fails
  over once, to the next such server, when the first cannot be reached or answers 404 for a model
  it was listed with; never once the request may have been read (``Placement``);
* listings and ``/api/version`` are answered for the whole fleet (``listings.py``);
* model management goes to the server the ``X-Gateway-Upstream`` header names; without it,
  ``/api/pull`` and ``/api/delete`` go to every server (``fanout.py``) and the rest are refused.

The choice is the flow's ``Destination``: the forwarder sends the request and asks it, between
attempts, whether the request goes once more, elsewhere.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from gateway.errors import (
    BadRequest,
    GatewayError,
    ModelNotFound,
    UpstreamBusy,
    UpstreamConnectTimeout,
    UpstreamNotReached,
    UpstreamUnavailable,
)
from gateway.fleet import Fleet, Member
from gateway.fleet.fanout import FanOut
from gateway.fleet.listings import Answer, FleetListing, Merges
from gateway.fleet.queue import Ticket
from gateway.flow import Flow
from gateway.ollama.models import parse_model
from gateway.ollama.surfaces import Fleetwide, Route, RouteClass
from gateway.proxy.headers import UPSTREAM_HEADER, header
from gateway.proxy.inbound import Inbound
from gateway.proxy.upstream import Outbound, Upstream, UpstreamResponse, read_whole

_HELD_LIMIT = 65536


class RoutingPolicy:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._merges = Merges()

    async def admit(self, flow: Flow, inbound: Inbound) -> Placement:
        fleet = self.fleet
        route = flow.route
        if fleet.solo is not None:
            # Everything to the one server, which answers as Ollama alone would (Fleet.solo).
            return await self._place(flow, fleet.solo)
        if route.per_server:
            return await self._per_server(flow, header(flow.headers, UPSTREAM_HEADER))
        if route.fleetwide.merged and flow.method == "GET":
            return self._everywhere(flow, FleetListing(fleet, route, self._merges), ())
        if flow.model is None:
            member = fleet.least_busy()
            if member is None:
                raise _none_usable(fleet)
            return await self._place(flow, member, chosen=True)
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
            raise _not_found(route, spelled)
        return await self._place(flow, holders[0], model=model, chosen=True)

    def finish(self, flow: Flow, placement: Placement) -> None:
        member = placement.member
        self._leave(placement)
        inference = flow.route.route_class is RouteClass.INFERENCE
        if member is not None and placement.model is not None and inference and flow.upstream_status == 200:
            # It has it in memory now; the next request for it should prefer this server.
            member.loaded.add(placement.model)
        if flow.route.changes_models:
            self.fleet.refresh_soon(placement.touched or None)

    async def _per_server(self, flow: Flow, named: bytes | None) -> Placement:
        fleet = self.fleet
        if named is not None:
            name = named.decode("latin-1").strip()
            member = fleet.named(name)
            if member is None:
                raise BadRequest(f"no upstream is named '{name[:100]}' (this gateway has: {_names(fleet)})")
            return await self._place(flow, member)
        route = flow.route
        if route.fleetwide.fanned_out:
            stream = route.streams and _streams(flow)
            fanout = FanOut(fleet.members, stream=stream, where_held=route.fleetwide is Fleetwide.WHERE_HELD)
            return self._everywhere(flow, fanout, fleet.members)
        raise BadRequest(
            f"this gateway fronts several Ollama servers: name one for {route.name} with the "
            f"X-Gateway-Upstream header ({_names(fleet)})"
        )

    def _everywhere(self, flow: Flow, upstream: Upstream, touched: tuple[Member, ...]) -> Placement:
        """An answer from every server (a merged listing, a fan-out), held on none of them."""
        flow.upstream_name = "*"
        placement = Placement(self, upstream, touched=touched)
        flow.destination = placement
        return placement

    async def _place(self, flow: Flow, member: Member, *, model: str | None = None, chosen: bool = False) -> Placement:
        placement = Placement(self, member.client, model=model, chosen=chosen)
        flow.destination = placement
        await self._seat(flow, placement, member)
        return placement

    async def _seat(self, flow: Flow, placement: Placement, member: Member) -> None:
        """Count the request on ``member`` and, for inference, wait for a fair slot there."""
        placement.member = member
        placement.upstream = member.client
        placement.touched = (*placement.touched, member)
        member.routed += 1
        flow.upstream_name = member.name
        if member.queue is None or flow.route.route_class is not RouteClass.INFERENCE:
            return
        principal = flow.caller()
        queued_at = time.perf_counter()
        try:
            placement.ticket = await member.queue.acquire(principal.key_id, principal.limits.weight or 1)
        except BaseException:
            # Refused or abandoned while queued: it never ran here, and holds nothing.
            member.routed -= 1
            placement.member = None
            flow.queue_wait += time.perf_counter() - queued_at
            raise
        flow.queue_wait += placement.ticket.waited
        if not any(name == b"x-queue-wait-ms" for name, _ in flow.response_headers):
            flow.response_headers.append((b"x-queue-wait-ms", f"{flow.queue_wait * 1000:.0f}".encode()))
            flow.response_headers.append((b"x-queue-position", str(placement.ticket.position).encode()))

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
        flow.failed_over_from = placement.member.name if placement.member is not None else None
        placement.moved = True
        self._leave(placement)
        await self._seat(flow, placement, member)


@dataclass(eq=False, slots=True)
class Placement:
    """Where a request runs, the flow's ``Destination``: the upstream it is sent to, its server
    and its slot there, and every server it touched. It refers to the policy, never to the flow.

    Where the gateway chose the server among several (``chosen``), a server that cannot be reached
    (refused, unroutable, no connection in time) is marked down and the request goes once to the
    next server that has the model: it never left the gateway, so nothing runs twice. So does one
    that answers 404 for a model it was listed with (deleted behind the gateway's back: no work was
    done). A server that closes the connection before answering is marked down too, but the request
    is not sent again: it may have been read, and a second generation (or pull, or delete) must not
    run. Nor is a request whose body was streamed. A server named by the client, or the only one,
    is the client's answer whatever it says.
    """

    policy: RoutingPolicy
    upstream: Upstream
    member: Member | None = None
    ticket: Ticket | None = None
    model: str | None = None
    touched: tuple[Member, ...] = ()
    chosen: bool = False
    moved: bool = False  # it failed over once already: whatever comes now is the answer

    async def failed(self, flow: Flow, request: Outbound, error: GatewayError) -> bool:
        member = self.member
        if not self.chosen or member is None or isinstance(error, UpstreamBusy):
            return False
        if isinstance(error, (UpstreamUnavailable, UpstreamConnectTimeout)):
            self.policy.fleet.mark_down(member, error.message)
        if not isinstance(error, (UpstreamNotReached, UpstreamConnectTimeout)):
            return False
        following = self._next(member, request)
        if following is None:
            return False
        await self.policy.move(flow, self, following)
        return True

    async def answered(self, flow: Flow, request: Outbound, response: UpstreamResponse) -> UpstreamResponse | None:
        model = self.model
        if response.status != 404 or model is None or (first := self.member) is None:
            return response
        following = self._next(first, request)
        if following is None:
            return response
        held = await _held(response)
        if not _lacks_model(held.content):
            return held
        self.policy.fleet.forget(first, model)
        await self.policy.move(flow, self, following)
        return None

    def _next(self, first: Member, request: Outbound) -> Member | None:
        model = self.model
        if self.moved or model is None or not isinstance(request.body, bytes):
            return None
        return next((member for member in self.policy.fleet.holders(model) if member is not first), None)


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


def _not_found(route: Route, model: str) -> ModelNotFound:
    # Ollama's own words for a model it does not have, by route (see its handlers).
    if route.embedding:
        return ModelNotFound(f'model "{model}" not found, try pulling it first')
    return ModelNotFound(f"model '{model}' not found")
