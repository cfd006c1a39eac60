"""A finished request's objects go when its last reference goes, not at the cyclic collector's next
pass: the gateway collects rarely (runtime/tuning.py freezes the start-up heap and raises the thresholds),
so garbage caught in cycles would pile up for minutes and set the process's memory high-water mark.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import Fleetside
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway, raw_post, read_until

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
# Whose objects count: the gateway's own, and the C types of its connections.
OURS = ("gateway.", "uvloop.", "httptools.")


@contextmanager
def saving_garbage() -> Iterator[list[object]]:
    """From here on, what the cyclic collector frees is kept to be looked at. Entered once the
    gateway under test runs: what starting one (or an earlier test's teardown) leaves behind is
    collected first and is not what these tests look for."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    with saving_garbage() as garbage:
        yield garbage


def _cyclic(garbage: list[object]) -> Counter[str]:
    gc.collect()
    names = (f"{type(item).__module__}.{type(item).__qualname__}" for item in garbage)
    return Counter(name for name in names if name.startswith(OURS))


def test_plain_cut_and_abandoned_requests_leave_no_cycles(
    gateway: RunningGateway, fake: FakeOllama, saved_garbage: list[object]
) -> None:
    body = json.dumps(CHAT).encode()
    with httpx.Client(base_url=gateway.url, headers=gateway.auth, timeout=10) as client:
        for _ in range(10):
            assert client.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
            with client.stream("POST", "/api/chat", json=CHAT) as response:
                assert len(list(response.iter_lines())) == 4
            fake.behaviour = Behaviour(tokens=5, cut_after=2, cut_reset=True)
            with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
                assert b"upstream_connection_lost" in response.read()
            fake.behaviour = Behaviour(tokens=50, token_delay=0.01)
            with raw_post(gateway.url, "/api/chat", body, gateway.auth) as sock:
                read_until(sock, b"tok1")  # then hang up
            assert fake.requests[-1].client_disconnected.wait(5)
            fake.behaviour = Behaviour()
    assert _cyclic(saved_garbage) == Counter()


def test_requests_routed_among_several_servers_leave_no_cycles(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")  # a is preferred, until it goes
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    with (
        saving_garbage() as saved_garbage,
        httpx.Client(base_url=side.gateway.url, headers=side.auth(), timeout=10) as client,
    ):
        for _ in range(10):
            assert client.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
            with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
                assert response.read().endswith(b"data: [DONE]\n\n")
            assert client.get("/api/tags").status_code == 200
        assert side.served() == {"a": 10, "b": 0}
        side.fakes["a"].stop()  # the next request fails over to b
        assert client.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
        assert side.served()["b"] == 1
        assert _cyclic(saved_garbage) == Counter()


def test_requests_refused_in_a_servers_queue_leave_no_cycles(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]}, upstream_concurrency=1, queue_timeout=0.05)
    gate = StepGate()
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    with (
        saving_garbage() as saved_garbage,
        httpx.Client(base_url=side.gateway.url, headers=side.auth(), timeout=10) as client,
        client.stream("POST", "/api/chat", json=CHAT) as holding,  # a's one slot, held
    ):
        lines = holding.iter_lines()
        next(lines)
        for _ in range(5):
            refused = client.post("/api/chat", json={**CHAT, "stream": False})
            assert refused.status_code == 503, refused.text
        gate.release(10)
        assert json.loads(list(lines)[-1])["done"] is True
        assert _cyclic(saved_garbage) == Counter()
