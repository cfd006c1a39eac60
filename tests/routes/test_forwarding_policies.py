"""The forwarder's contract with its policies and the core's transform chain, checked in isolation:
an ASGI call with a scripted upstream, no sockets (the behaviour on the wire is tested elsewhere)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message

from gateway.admin import LiveTraffic
from gateway.admin.traffic import Arrivals
from gateway.app import create_app
from gateway.errors import Forbidden, GatewayError, UpstreamNotReached
from gateway.flow import Flow
from gateway.keys.principal import Principal
from gateway.keys.store import Limits, Scope
from gateway.ollama.surfaces import classify
from gateway.policies.account import AccountPolicy
from gateway.policies.auth import AuthPolicy
from gateway.policies.bodyreader import BodyBudget, BodyReader
from gateway.policies.limits.policy import LimitPolicy
from gateway.policies.permissions import ModelPolicy, RoutePolicy
from gateway.policies.requestbody import RequestBodyPolicy
from gateway.policies.routing import RoutingPolicy
from gateway.policies.usagerequest import StreamUsagePolicy
from gateway.proxy.clientaddr import ClientAddress, ClientResolver
from gateway.proxy.inbound import Inbound
from gateway.proxy.relay import Chain
from gateway.proxy.upstream import Outbound, UpstreamResponse
from gateway.routes.forwarding import ForwardedRoutes, Policy
from tests.conftest import gateway_settings
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.timeout(10)


class _Direct:
    """A destination with no second choice."""

    def __init__(self, upstream: MockUpstream) -> None:
        self.upstream = upstream

    async def failed(self, flow: Flow, request: Outbound, error: GatewayError) -> bool:
        return False

    async def answered(self, flow: Flow, request: Outbound, response: UpstreamResponse) -> UpstreamResponse:
        return response


class _To:
    """Routes every request to one upstream (the routing policy's part)."""

    def __init__(self, upstream: MockUpstream) -> None:
        self.upstream = upstream

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        flow.destination = _Direct(self.upstream)

    def finish(self, flow: Flow, admitted: None) -> None:
        pass


class _Recording:
    """Returns a token of its own from admit; notes what finish got back, and when."""

    def __init__(self, name: str, log: list[tuple[str, str, object]], *, refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    async def admit(self, flow: Flow, inbound: Inbound) -> dict[str, str]:
        self.log.append(("admit", self.name, None))
        if self.refuse:
            raise Forbidden(f"{self.name} refuses")
        return {"token of": self.name}

    def finish(self, flow: Flow, admitted: dict[str, str]) -> None:
        self.log.append(("finish", self.name, admitted))


async def _call(forwarder: ForwardedRoutes) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/tags",
        "raw_path": b"/api/tags",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "client": ("127.0.0.1", 5000),
    }
    await forwarder(scope, receive, send)
    return sent


async def test_each_policy_gets_its_own_admission_back_in_reverse_order() -> None:
    log: list[tuple[str, str, object]] = []
    upstream = MockUpstream.answering(b'{"a":1}\n')
    policies: list[Policy[Any]] = [_Recording("first", log), _Recording("second", log), _To(upstream)]
    forwarder = ForwardedRoutes(resolver=ClientResolver(()), max_body_bytes=1024, policies=policies)
    sent = await _call(forwarder)
    assert sent[0]["status"] == 200
    assert log == [
        ("admit", "first", None),
        ("admit", "second", None),
        ("finish", "second", {"token of": "second"}),
        ("finish", "first", {"token of": "first"}),
    ]


async def test_a_refusal_finishes_only_the_policies_that_admitted() -> None:
    log: list[tuple[str, str, object]] = []
    upstream = MockUpstream.answering()
    policies: list[Policy[Any]] = [
        _Recording("first", log),
        _Recording("second", log, refuse=True),
        _Recording("third", log),
        _To(upstream),
    ]
    forwarder = ForwardedRoutes(resolver=ClientResolver(()), max_body_bytes=1024, policies=policies)
    sent = await _call(forwarder)
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"]) == {"error": "second refuses"}
    assert log == [("admit", "first", None), ("admit", "second", None), ("finish", "first", {"token of": "first"})]
    assert upstream.sent == []


class _Second:
    """Fails over once, from ``first`` to ``second``, noting each step."""

    def __init__(self, first: MockUpstream, second: MockUpstream, log: list[str]) -> None:
        self.upstream, self._second, self._log = first, second, log

    async def failed(self, flow: Flow, request: Outbound, error: GatewayError) -> bool:
        self._log.append(f"failed: {error.message}")
        moved = self.upstream is not self._second
        self.upstream = self._second
        return moved

    async def answered(self, flow: Flow, request: Outbound, response: UpstreamResponse) -> UpstreamResponse:
        self._log.append(f"answered: {response.status}")
        return response


async def test_the_destination_decides_between_attempts_and_the_core_sends_each_once() -> None:
    log: list[str] = []
    first, second = (
        MockUpstream.raising(UpstreamNotReached("upstream a unavailable: Connection refused")),
        MockUpstream.answering(*[b'{"from":"second"}\n']),
    )

    class _Failing(_To):
        async def admit(self, flow: Flow, inbound: Inbound) -> None:
            flow.destination = _Second(first, second, log)

    forwarder = ForwardedRoutes(resolver=ClientResolver(()), max_body_bytes=1024, policies=[_Failing(first)])
    sent = await _call(forwarder)
    assert (sent[0]["status"], sent[1]["body"]) == (200, b'{"from":"second"}\n')
    assert log == ["failed: upstream a unavailable: Connection refused", "answered: 200"]
    assert (len(first.sent), len(second.sent)) == (1, 1)
    assert first.sent[0] is second.sent[0]  # the same request, sent again unchanged


async def test_a_failure_the_destination_keeps_is_the_clients_answer() -> None:
    log: list[str] = []
    first = MockUpstream.raising(UpstreamNotReached("upstream a unavailable: Connection refused"))

    class _Failing(_To):
        async def admit(self, flow: Flow, inbound: Inbound) -> None:
            flow.destination = _Second(first, first, log)

    forwarder = ForwardedRoutes(resolver=ClientResolver(()), max_body_bytes=1024, policies=[_Failing(first)])
    sent = await _call(forwarder)
    assert sent[0]["status"] == 502
    assert json.loads(sent[1]["body"]) == {"error": "upstream a unavailable: Connection refused"}
    assert (log, len(first.sent)) == (["failed: upstream a unavailable: Connection refused"], 1)


class _Lines:
    """Holds back a partial line; passes whole lines on."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        whole, _, self.held = (self.held + data).rpartition(b"\n")
        return whole + b"\n" if whole else b""

    def end(self) -> bytes:
        held, self.held = self.held, b""
        return held


class _Upper:
    def __init__(self) -> None:
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        return data.upper()

    def end(self) -> bytes:
        self.ended = True
        return b"!"


def test_a_chain_feeds_each_transform_what_the_one_before_let_out() -> None:
    upper = _Upper()
    chain = Chain([_Lines(), upper])
    assert chain.feed(b"ab") == b""  # held by the first: the second never sees it
    assert chain.feed(b"c\nd") == b"ABC\n"
    # What the first still held at the end passes through the second before that one ends.
    assert chain.end() == b"D!"
    assert upper.ended


async def test_transforms_set_by_policies_rewrite_the_relayed_body_in_order() -> None:
    class _Transforming(_Recording):
        async def admit(self, flow: Flow, inbound: Inbound) -> dict[str, str]:
            flow.transforms.extend([_Lines(), _Upper()])
            return await super().admit(flow, inbound)

    upstream = MockUpstream.answering(b'{"a"', b":1}\n{", b'"b":2}')
    forwarder = ForwardedRoutes(
        resolver=ClientResolver(()), max_body_bytes=1024, policies=[_Transforming("t", []), _To(upstream)]
    )
    sent = await _call(forwarder)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert body == b'{"A":1}\n{"B":2}!'
    assert all(name != b"content-length" for name, _ in sent[0]["headers"])


def test_the_gateway_composes_its_policies_in_the_order_safety_needs() -> None:
    """Who calls (Ollama's account routes are answered for that caller), may they reach the route,
    then the body (never buffered for a stranger), then the model it names, then limits, then the
    server and a slot on it: a model check before the body was
    read would allow any model, and a slot taken before the limits would queue refused requests; the
    live counts around the routing (queued, then in flight) refuse nothing."""
    app = create_app(gateway_settings(upstream_url="http://127.0.0.1:9", database_url="sqlite:///:memory:"))
    order = [type(policy) for policy in app.forwarded.policies]
    assert order == [
        AuthPolicy,
        AccountPolicy,
        RoutePolicy,
        RequestBodyPolicy,
        ModelPolicy,
        StreamUsagePolicy,
        LimitPolicy,
        Arrivals,
        RoutingPolicy,
        LiveTraffic,
    ]


async def test_a_model_check_without_the_body_is_a_bug_not_an_allowance() -> None:
    flow = _flow("/api/chat")
    flow.principal = Principal(key_id="k", name="k", scopes=frozenset(Scope), patterns=(), limits=Limits())
    with pytest.raises(RuntimeError, match="before the body was read"):
        await ModelPolicy(allow_cloud=False).admit(flow, Inbound(_nothing, has_body=False))
    policy = RequestBodyPolicy(max_body_bytes=1024, budget=BodyBudget(1024, wait=1), reader=BodyReader())
    with pytest.raises(RuntimeError, match="before authentication"):
        await policy.admit(_flow("/api/chat"), Inbound(_nothing, has_body=False))


async def _nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _flow(path: str) -> Flow:
    return Flow(
        request_id="r",
        method="POST",
        path=path,
        route=classify(path),
        client=ClientAddress("127.0.0.1", "http", "127.0.0.1"),
        headers=[],
    )
