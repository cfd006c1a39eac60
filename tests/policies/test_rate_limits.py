"""Per-key limits and fair sharing, end to end through a real gateway (in-process backend)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from gateway.keys.store import Limits
from gateway.policies.routing import RoutingPolicy
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway, raw_post, read_until

pytestmark = pytest.mark.timeout(30)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _chat(prompt: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}], **extra}


async def test_parallel_requests_against_rpm_are_exact(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "fifty", limits=Limits(rpm=50))
    gateway = make_gateway(upstream_concurrency=0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, headers=_bearer(key), limits=limits, timeout=20) as client:
        responses = await asyncio.gather(*(client.get("/api/version") for _ in range(200)))
    # The bucket refills one request every 1.2 s: a slow machine may legitimately see one more.
    refilled = int((time.monotonic() - started) * 50 / 60)
    statuses = [response.status_code for response in responses]
    admitted = statuses.count(200)
    assert 50 <= admitted <= 50 + refilled
    assert statuses.count(429) == 200 - admitted
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json() == {"error": "rate limit reached: 50 requests per minute"}
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake.requests) == admitted


def test_token_budget_is_charged_from_real_counts(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    # Each request reserves ~55 tokens (num_predict 50) but really uses 7 + 3 = 10.
    key = issue_key(database_url, "budget", limits=Limits(tpd=100))
    gateway = make_gateway()
    fake.behaviour = Behaviour(tokens=3, prompt_eval_count=7)
    body = _chat(stream=False, options={"num_predict": 50})
    statuses = []
    for _ in range(8):
        statuses.append(httpx.post(gateway.url + "/api/chat", json=body, headers=_bearer(key), timeout=10).status_code)
    # Charged by the reservation only one would fit; charged by real counts, five do.
    assert statuses == [200] * 5 + [429] * 3
    refused = httpx.post(gateway.url + "/api/chat", json=body, headers=_bearer(key), timeout=10)
    assert refused.headers["x-should-retry"] == "false"


def test_a_stream_cut_short_is_charged_what_it_produced(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "streamer", limits=Limits(tpd=100))
    gateway = make_gateway()
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=50, gate=gate)
    body = json.dumps(_chat(options={"num_predict": 90})).encode()
    with raw_post(gateway.url, "/api/chat", body, _bearer(key)) as sock:
        gate.release(1)
        read_until(sock, b'"done":false', 2)
    assert fake.wait_for_request().client_disconnected.wait(2)
    # The ~95-token reservation was given back except for the ~2 tokens produced, so a second
    # request reserving ~95 fits in the 100-token day.
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline:
        fake.behaviour = Behaviour(tokens=1, prompt_eval_count=1)
        status = httpx.post(
            gateway.url + "/api/chat", json=_chat(stream=False, options={"num_predict": 90}), headers=_bearer(key)
        ).status_code
        if status != 429:
            break
        time.sleep(0.05)
    assert status == 200


async def test_no_overshoot_with_many_concurrent_requests(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "small", limits=Limits(tpd=1000))
    gateway = make_gateway(upstream_concurrency=0)
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=3, prompt_eval_count=7, gate=gate)
    # prompt estimate 0 + 4 per message + 1 = 5, plus num_predict 10: 15 reserved per request.
    body = _chat(prompt="x", options={"num_predict": 10})
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=gateway.url, headers=_bearer(key), limits=limits, timeout=20) as client:

        async def open_stream() -> httpx.Response:
            return await client.send(client.build_request("POST", "/api/chat", json=body), stream=True)

        responses = await asyncio.gather(*(open_stream() for _ in range(200)))
        admitted = [response for response in responses if response.status_code == 200]
        # Every admitted stream is still open, so nothing was settled yet: reservations decide.
        assert len(admitted) == 1000 // 15
        gate.release(10_000)
        for response in responses:
            await response.aread()
            await response.aclose()
    # Only admitted requests reached Ollama, and together they used 10 tokens each.
    assert len(fake.requests) == len(admitted)
    assert 10 * len(admitted) <= 1000


def test_rate_limit_headers_on_streams_decrease(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "headers", limits=Limits(rpm=100, tpm=100_000))
    gateway = make_gateway()
    remaining = []
    for path, body in (
        ("/api/chat", _chat()),
        ("/v1/chat/completions", _chat(stream=True)),
        ("/api/generate", {"model": "llama3.2", "prompt": "x"}),
    ):
        with httpx.stream("POST", gateway.url + path, json=body, headers=_bearer(key), timeout=10) as response:
            assert response.headers["content-type"] in ("application/x-ndjson", "text/event-stream")
            assert response.headers["x-ratelimit-limit-requests"] == "100"
            assert response.headers["x-ratelimit-limit-tokens"] == "100000"
            assert response.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
            response.read()
    assert remaining == [99, 98, 97]


def test_openai_sdk_retries_a_429_and_succeeds(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    # 30 per minute: the bucket gets one request back every 2 s.
    key = issue_key(database_url, "sdk", limits=Limits(rpm=30))
    gateway = make_gateway()
    with httpx.Client(base_url=gateway.url, headers=_bearer(key)) as client:
        for _ in range(30):
            assert client.get("/api/version").status_code == 200
        # Empty the bucket for sure (it refills while a slow machine sends the 30).
        for _ in range(10):
            if client.get("/api/version").status_code == 429:
                break
    statuses: list[int] = []
    http_client = openai.DefaultHttpxClient(
        event_hooks={"response": [lambda response: statuses.append(response.status_code)]}
    )
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=2, http_client=http_client) as sdk:
        completion = sdk.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    # Refused once (retry-after-ms up to 2000), then admitted when the SDK retried.
    assert statuses[0] == 429
    assert statuses[-1] == 200


def _queue_depth(gateway: RunningGateway) -> float:
    # The one server's queue, named by its address.
    (routing,) = [policy for policy in gateway.app.forwarded.policies if isinstance(policy, RoutingPolicy)]
    (member,) = routing.fleet.members
    sample = gateway.app.metrics.registry.get_sample_value("gateway_queue_depth", {"upstream": member.name})
    return sample or 0.0


def _wait_for(condition: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


async def test_fair_queue_keeps_one_key_from_starving_another(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    busy = issue_key(database_url, "busy")
    polite = issue_key(database_url, "polite")
    gateway = make_gateway(upstream_concurrency=1)
    fake.behaviour = Behaviour(tokens=2, token_delay=0.01)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=20) as client:
        flood = [
            asyncio.create_task(client.post("/api/chat", json=_chat(f"busy {n}", stream=False), headers=_bearer(busy)))
            for n in range(20)
        ]
        assert await asyncio.to_thread(_wait_for, lambda: _queue_depth(gateway) >= 19)
        # The polite key sends one request at a time while the busy key's backlog waits.
        for n in range(3):
            reply = await client.post("/api/chat", json=_chat(f"polite {n}", stream=False), headers=_bearer(polite))
            assert reply.status_code == 200
            assert int(reply.headers["x-queue-wait-ms"]) >= 0
            assert int(reply.headers["x-queue-position"]) >= 1
        await asyncio.gather(*flood)
    order = [recorded.json["messages"][0]["content"] for recorded in fake.requests]
    # First come first served would forward the first one 21st; in turn, each polite request
    # waits only for the busy request already in flight: it goes next.
    positions = [order.index(f"polite {n}") for n in range(3)]
    assert positions[0] <= 2
    assert all(later - earlier <= 2 for earlier, later in itertools.pairwise(positions))


def test_a_client_leaving_the_queue_is_never_forwarded(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(upstream_concurrency=1)
    fake.behaviour = Behaviour(hang=True)

    def open_request(prompt: str) -> socket.socket:
        return raw_post(gateway.url, "/api/chat", json.dumps(_chat(prompt, stream=False)).encode(), gateway.auth)

    first = open_request("first")
    fake.wait_for_request()
    queued = open_request("queued")
    assert _wait_for(lambda: _queue_depth(gateway) == 1)
    queued.close()
    assert _wait_for(lambda: _queue_depth(gateway) == 0)
    first.close()
    assert fake.requests[0].client_disconnected.wait(2)
    fake.behaviour = Behaviour()
    after = httpx.post(gateway.url + "/api/chat", json=_chat("after", stream=False), headers=gateway.auth, timeout=10)
    assert after.status_code == 200
    assert [recorded.json["messages"][0]["content"] for recorded in fake.requests] == ["first", "after"]


def test_queue_timeout_is_503_not_429(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(upstream_concurrency=1, queue_timeout=0.2)
    fake.behaviour = Behaviour(hang=True)
    with raw_post(gateway.url, "/api/chat", json.dumps(_chat(stream=False)).encode(), gateway.auth):
        fake.wait_for_request()
        native = httpx.post(gateway.url + "/api/chat", json=_chat(stream=False), headers=gateway.auth, timeout=10)
        compat = httpx.post(gateway.url + "/v1/chat/completions", json=_chat(), headers=gateway.auth, timeout=10)
    assert native.status_code == 503
    assert native.headers["retry-after"] == "5"
    assert native.json() == {"error": "the upstream is busy: no slot became free within 0.2 s"}
    assert compat.status_code == 503
    assert compat.json()["error"]["code"] == "queue_timeout"
    assert len(fake.requests) == 1


def test_a_zero_limit_blocks_the_key_for_good(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str
) -> None:
    key = issue_key(database_url, "blocked", limits=Limits(rpm=0))
    gateway = make_gateway()
    response = httpx.get(gateway.url + "/api/tags", headers=_bearer(key), timeout=10)
    assert response.status_code == 429
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {"error": "this API key may not make requests (rpm limit is 0)"}
    assert fake.requests == []


RATELIMIT_HEADERS = [
    f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset")
]
LIMITED = {
    "rpm": Limits(rpm=1, tpm=100_000),
    "tpm": Limits(rpm=100, tpm=60),
    "tpd": Limits(rpm=100, tpm=100_000, tpd=60),
    "concurrency": Limits(rpm=100, tpm=100_000, concurrency=1),
}


@pytest.fixture(params=["memory", "redis"])
def redis_setting(request: pytest.FixtureRequest) -> str | None:
    """Each test once per limiter backend."""
    return None if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.mark.parametrize("refused_by", list(LIMITED))
def test_every_429_of_a_key_with_rpm_and_tpm_carries_all_six_ratelimit_headers(
    make_gateway: Callable[..., RunningGateway],
    fake: FakeOllama,
    database_url: str,
    redis_setting: str | None,
    refused_by: str,
) -> None:
    limits = LIMITED[refused_by]
    key = issue_key(database_url, refused_by, limits=limits)
    gateway = make_gateway(redis_url=redis_setting)
    # Reserves ~56 tokens, uses 10: a second one no longer fits a 60-token minute or day.
    body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 55}}
    with httpx.Client(base_url=gateway.url, headers=_bearer(key), timeout=10) as client:
        if refused_by == "concurrency":
            gate = StepGate()
            fake.behaviour = Behaviour(gate=gate)
            streamed = json.dumps({**body, "stream": True}).encode()
            with raw_post(gateway.url, "/api/generate", streamed, _bearer(key)) as held:
                read_until(held, b"tok0")  # admitted and running: the key's one slot is taken
                refused = client.post("/api/generate", json=body)
                gate.release(10)
        else:
            assert client.post("/api/generate", json=body).status_code == 200
            refused = client.post("/api/generate", json=body)
    assert refused.status_code == 429
    assert [name for name in RATELIMIT_HEADERS if name not in refused.headers] == []
    assert refused.headers["x-ratelimit-limit-requests"] == str(limits.rpm)
    assert refused.headers["x-ratelimit-limit-tokens"] == str(limits.tpm)
