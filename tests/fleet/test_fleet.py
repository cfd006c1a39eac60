"""Several Ollama servers behind one gateway: routing by model, the loaded copy first, the least
busy next, failover before the first byte and never after it, servers leaving and rejoining,
merged listings under the key's model globs, one fair queue per server, admin routing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ollama
import openai
import pytest

from gateway.fleet import State
from tests.conftest import FLEET_CHAT as CHAT
from tests.conftest import FLEET_WAIT as WAIT
from tests.conftest import Fleetside, issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway

pytestmark = pytest.mark.timeout(60)


@contextmanager
def held(client: httpx.Client, body: dict[str, Any], gate: StepGate) -> Iterator[None]:
    """A gated stream on its server, its first line read, held open while the block runs; then
    released and read to its end."""
    with client.stream("POST", "/api/chat", json=body) as holding:
        lines = holding.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)
        yield
        gate.release(10)
        assert json.loads(list(lines)[-1])["done"] is True


def test_a_request_goes_to_the_server_that_has_its_model(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    for model, server in (("qwen3", "b"), ("llama3.2", "a"), ("qwen3:latest", "b")):
        before = side.served()[server]
        response = side.chat(model)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        assert side.served()[server] == before + 1
    assert side.served() == {"a": 1, "b": 2}


def test_the_copy_already_loaded_is_preferred(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"], "c": ["llama3.2"]})
    side.fakes["b"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("b").loaded), "b's loaded model learned")  # type: ignore[union-attr]
    for _ in range(5):
        assert side.chat("llama3.2").status_code == 200
    assert side.served() == {"a": 0, "b": 5, "c": 0}


def test_the_server_a_model_was_just_used_on_is_preferred_before_any_refresh(
    make_fleet: Callable[..., Fleetside],
) -> None:
    # Nothing loaded anywhere, and no refresh for a minute: only the gateway's own routing can
    # know where the model went, and the next requests must follow it there.
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"], "c": ["llama3.2"]})
    for _ in range(4):
        assert side.chat("llama3.2").status_code == 200
    assert sorted(side.served().values()) == [0, 0, 4]


async def test_the_least_busy_server_is_chosen(make_fleet: Callable[..., Fleetside]) -> None:
    # No slot cap, nothing loaded: only the count in flight tells the servers apart.
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]}, upstream_concurrency=0)
    gates = {name: StepGate() for name in side.fakes}
    for name, fake in side.fakes.items():
        fake.behaviour = Behaviour(tokens=3, gate=gates[name])
    async with httpx.AsyncClient(base_url=side.gateway.url, headers=side.auth(), timeout=WAIT) as client:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        async with client.stream("POST", "/api/chat", json=body) as one:
            first_lines = one.aiter_lines()
            await first_lines.__anext__()
            busy = [name for name, count in side.served().items() if count == 1]
            assert len(busy) == 1
            async with client.stream("POST", "/api/chat", json=body) as two:
                second_lines = two.aiter_lines()
                await second_lines.__anext__()
                assert side.served() == {"a": 1, "b": 1}
                for gate in gates.values():
                    gate.release(10)
                assert json.loads([line async for line in second_lines][-1])["done"] is True
            assert json.loads([line async for line in first_lines][-1])["done"] is True


def test_a_server_that_refuses_the_connection_is_failed_over(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")  # a is preferred ...
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    side.fakes["a"].stop()  # ... and gone, before the gateway has noticed
    response = side.chat("llama3.2")
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "tok0 tok1 tok2 "
    assert side.served()["b"] == 1
    assert side.fleet.named("a").state is State.DOWN  # type: ignore[union-attr]
    samples = side.gateway.app.metrics.registry

    def failovers() -> float | None:
        return samples.get_sample_value("gateway_upstream_failovers_total", {"upstream": "a"})

    # Counted from the request's record, just after its last byte.
    side.wait_until(lambda: failovers() == 1, "the failover counted")
    # Down servers are skipped from then on, without another failed attempt.
    assert side.chat("llama3.2").status_code == 200
    assert side.served()["b"] == 2
    assert failovers() == 1


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_request_a_server_may_have_read_is_never_sent_again(
    make_fleet: Callable[..., Fleetside], reset: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The connection ends after the request went out, before any answer: Ollama may have read it
    # (a crash mid-generation, a balancer cutting a long one). Sending it to b could run the
    # generation twice, so the client gets the 502 and the server is skipped until it answers.
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    side.fakes["a"].behaviour = Behaviour(cut_after=0, cut_reset=reset)
    response = side.chat("llama3.2", stream=True)
    assert response.status_code == 502
    assert (
        response.json()["error"] == f"upstream 127.0.0.1:{side.fakes['a'].port} closed the connection before answering"
    )
    assert side.served() == {"a": 1, "b": 0}
    assert f"upstream a is down: {response.json()['error']}" in caplog.messages


def test_the_server_failed_over_to_is_held_to_the_same_rules(
    make_fleet: Callable[..., Fleetside], caplog: pytest.LogCaptureFixture
) -> None:
    # a (preferred: it has the model loaded) cannot be reached: the request goes to b or c, which
    # hangs up before answering (it may have read the request). No third attempt, and that server
    # is marked down as a is.
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"], "c": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    gone = side.fakes["a"].port
    side.fakes["a"].stop()
    for name in "bc":
        side.fakes[name].behaviour = Behaviour(cut_after=0)
    response = side.chat("llama3.2")
    assert response.status_code == 502
    served = side.served()
    (second,) = [name for name in "bc" if served[name] == 1]
    (third,) = {"b", "c"} - {second}
    assert (served["a"], served[third]) == (0, 0)
    assert response.json()["error"] == (
        f"upstream 127.0.0.1:{side.fakes[second].port} closed the connection before answering"
    )
    # (Logged when marked down; its watcher, woken, may well find it up again at once.)
    assert [message for message in caplog.messages if " is down: " in message] == [
        f"upstream a is down: upstream 127.0.0.1:{gone} unavailable: Connection refused",
        f"upstream {second} is down: {response.json()['error']}",
    ]


def test_no_retry_once_a_byte_has_gone_to_the_client(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    side.fakes["a"].behaviour = Behaviour(tokens=5, cut_after=2)
    response = side.chat("llama3.2", stream=True)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines[:-1]] == ["tok0 ", "tok1 "]
    assert "error" in lines[-1]
    assert side.served() == {"a": 1, "b": 0}


def test_a_server_leaves_and_rejoins(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]}, upstream_refresh_interval=0.2)
    port, fleet = side.fakes["a"].port, side.fleet
    side.fakes["a"].stop()
    side.wait_until(lambda: fleet.named("a").state is State.DOWN, "a marked down")  # type: ignore[union-attr]
    ready = httpx.get(side.gateway.url + "/readyz").json()
    assert ready["checks"]["upstream"] == "degraded: 1 of 2 servers not answering"
    assert ready["upstreams"]["a"]["state"] == "down"
    for _ in range(4):
        assert side.chat("llama3.2").status_code == 200
    assert side.served()["b"] == 4
    with FakeOllama(["llama3.2"], port=port) as again:
        side.fakes["a"] = again
        side.wait_until(lambda: fleet.named("a").state is State.UP, "a back up")  # type: ignore[union-attr]
        again.load("llama3.2")  # as loaded as b's copy: the two take turns
        side.wait_until(lambda: bool(fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
        for _ in range(4):
            assert side.chat("llama3.2").status_code == 200
        assert side.served()["a"] >= 1
    assert httpx.get(side.gateway.url + "/readyz").json()["upstreams"]["b"]["state"] == "up"


def test_nothing_is_ready_while_no_server_answers(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]}, upstream_refresh_interval=0.2)
    for fake in side.fakes.values():
        fake.stop()
    side.wait_until(lambda: not side.fleet.ready(), "every server down")
    ready = httpx.get(side.gateway.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["upstream"] == "unavailable"
    response = side.chat("llama3.2")
    assert response.status_code == 502
    assert response.json()["error"].startswith(
        "no upstream that has model 'llama3.2' is reachable (a: upstream 127.0.0.1:"
    )


def test_listings_are_merged_and_filtered_by_the_key(make_fleet: Callable[..., Fleetside], tmp_path: Any) -> None:
    side = make_fleet(
        {"a": ["llama3.2", "qwen3"], "b": ["qwen3", "nomic-embed-text"]}, versions={"a": "0.33.0", "b": "0.9.10"}
    )
    side.fakes["a"].load("llama3.2")
    side.fakes["b"].load("qwen3")
    side.fakes["b"].load("nomic-embed-text")
    url = side.gateway.url
    everything = httpx.get(url + "/api/tags", headers=side.auth()).json()["models"]
    assert sorted(m["name"] for m in everything) == ["llama3.2:latest", "nomic-embed-text:latest", "qwen3:latest"]
    # One entry per name, the first server's (a's) where both list it.
    on_a = {m["name"]: m for m in httpx.get(side.fakes["a"].url + "/api/tags").json()["models"]}
    assert {m["name"]: m for m in everything}["qwen3:latest"] == on_a["qwen3:latest"]
    limited = issue_key(f"sqlite:///{tmp_path / 'gateway.db'}", "limited", models=("llama3.2", "nomic-*"))
    tags = httpx.get(url + "/api/tags", headers=side.auth(limited)).json()["models"]
    assert sorted(m["name"] for m in tags) == ["llama3.2:latest", "nomic-embed-text:latest"]
    ps = httpx.get(url + "/api/ps", headers=side.auth(limited)).json()["models"]
    assert sorted(m["name"] for m in ps) == ["llama3.2:latest", "nomic-embed-text:latest"]
    with openai.OpenAI(base_url=url + "/v1", api_key=limited, max_retries=0) as client:
        assert sorted(m.id for m in client.models.list().data) == ["llama3.2:latest", "nomic-embed-text:latest"]
    # The lowest version in the fleet, compared as versions (0.9.10 < 0.33.0), not as text.
    assert httpx.get(url + "/api/version", headers=side.auth()).json() == {"version": "0.9.10"}
    with ollama.Client(host=url, headers=side.auth(limited)) as native:
        assert sorted(str(m.model) for m in native.list().models) == ["llama3.2:latest", "nomic-embed-text:latest"]


def test_the_key_globs_hold_whichever_server_has_the_model(make_fleet: Callable[..., Fleetside], tmp_path: Any) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    limited = issue_key(f"sqlite:///{tmp_path / 'gateway.db'}", "limited", models=("llama3.2",))
    refused = side.chat("qwen3", key=limited)
    assert refused.status_code == 403
    assert refused.json() == {"error": "this API key may not use model 'qwen3:latest'"}
    # Naming a server changes nothing for inference: the header is the gateway's, for admin routes.
    pinned = httpx.post(
        side.gateway.url + "/api/chat",
        json={**CHAT, "model": "qwen3"},
        headers={**side.auth(limited), "X-Gateway-Upstream": "b"},
    )
    assert pinned.status_code == 403
    assert side.served() == {"a": 0, "b": 0}
    assert side.chat("llama3.2", key=limited).status_code == 200


def test_a_model_no_server_has_gets_ollamas_own_404(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    url, auth = side.gateway.url, side.auth()
    chat = side.chat("nope")
    assert (chat.status_code, chat.json()) == (404, {"error": "model 'nope' not found"})
    embed = httpx.post(url + "/api/embed", json={"model": "nope", "input": "x"}, headers=auth)
    assert (embed.status_code, embed.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})
    with (
        openai.OpenAI(base_url=url + "/v1", api_key=side.key, max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as raised,
    ):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": "model_not_found",
    }
    assert side.served() == {"a": 0, "b": 0}


def test_a_model_pulled_straight_on_a_server_is_found(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    side.fakes["b"].add_model("tinyllama")  # behind the gateway's back; the next refresh is a minute away
    response = side.chat("tinyllama")
    assert response.status_code == 200, response.text
    assert side.served() == {"a": 0, "b": 1}


def test_a_queue_on_one_server_never_delays_another(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]}, upstream_concurrency=1)
    gate = StepGate()
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    member_a = side.fleet.named("a")
    assert member_a is not None
    assert member_a.queue is not None
    results: list[int] = []

    def busy() -> None:
        results.append(side.chat("llama3.2", stream=True).status_code)

    threads = [threading.Thread(target=busy) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        side.wait_until(lambda: member_a.queue is not None and member_a.queue.waiting == 3, "three queued on a")
        quick = side.chat("qwen3")
        assert quick.status_code == 200
        assert quick.headers["x-queue-position"] == "0"
        assert member_a.queue.waiting == 3
        metrics = side.gateway.app.metrics.registry
        assert metrics.get_sample_value("gateway_queue_depth", {"upstream": "a"}) == 3
        assert metrics.get_sample_value("gateway_queue_depth", {"upstream": "b"}) == 0
    finally:
        gate.release(100)
        for thread in threads:
            thread.join(WAIT)
    assert results == [200, 200, 200, 200]


def test_pull_and_delete_go_to_every_server_without_a_name(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    url, auth = side.gateway.url, side.auth()
    with httpx.stream("POST", url + "/api/pull", json={"model": "tinyllama"}, headers=auth, timeout=WAIT) as pulled:
        assert pulled.status_code == 200
        assert pulled.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in pulled.iter_lines()]
    # Each server's progress as it comes, then one last line for all of them.
    for name in ("a", "b"):
        own = [line for line in lines[:-1] if line["upstream"] == name]
        assert own[0] == {"status": "pulling manifest", "upstream": name}
        assert own[-1] == {"status": "writing manifest", "upstream": name}
    assert lines[-1] == {"status": "success"}
    assert [line for line in lines if "upstream" not in line] == [lines[-1]]
    assert side.served("/api/pull") == {"a": 1, "b": 1}
    # Learned at once: both servers have it now.
    side.wait_until(
        lambda: all("registry.ollama.ai/library/tinyllama:latest" in m.models for m in side.fleet.members),
        "tinyllama learned on both",
    )
    # The ollama client's own pull, unstreamed: one combined answer.
    with ollama.Client(host=url, headers=auth) as client:
        assert client.pull("tinyllama", stream=False).status == "success"

    deleted = httpx.request("DELETE", url + "/api/delete", json={"model": "qwen3"}, headers=auth)
    assert (deleted.status_code, deleted.content) == (200, b"")  # deleted where it was
    assert "qwen3:latest" not in side.fakes["b"].models
    assert side.served("/api/delete") == {"a": 1, "b": 1}
    gone = httpx.request("DELETE", url + "/api/delete", json={"model": "qwen3"}, headers=auth)
    assert (gone.status_code, gone.json()) == (404, {"error": "model 'qwen3' not found"})


def test_one_server_failing_a_pull_does_not_stop_the_others(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"], "c": ["qwen3"]})
    a_port = side.fakes["a"].port
    side.fakes["a"].stop()  # gone, and not yet noticed
    side.fakes["c"].behaviour = Behaviour(status=500, error="disk full", paths=frozenset({"/api/pull"}))
    seen: list[str] = []

    def pull() -> None:
        with ollama.Client(host=side.gateway.url, headers=side.auth()) as client:
            seen.extend(progress.status or "" for progress in client.pull("tinyllama", stream=True))

    with pytest.raises(ollama.ResponseError) as raised:
        pull()
    # b's progress came through and b finished; the one error at the end says how each server did.
    assert seen[0] == "pulling manifest"
    assert "writing manifest" in seen
    assert "tinyllama:latest" in side.fakes["b"].models
    assert raised.value.error == (
        f"a: upstream 127.0.0.1:{a_port} unavailable: Connection refused; b: success; c: disk full"
    )


def test_other_model_management_needs_a_named_server(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    url, auth = side.gateway.url, side.auth()
    copy = {"source": "qwen3", "destination": "mine"}
    unnamed = httpx.post(url + "/api/copy", json=copy, headers=auth)
    assert unnamed.status_code == 400
    assert unnamed.json()["error"] == (
        "this gateway fronts several Ollama servers: name one for /api/copy with the X-Gateway-Upstream header (a, b)"
    )
    unknown = httpx.post(url + "/api/copy", json=copy, headers={**auth, "X-Gateway-Upstream": "z"})
    assert (unknown.status_code, unknown.json()) == (
        400,
        {"error": "no upstream is named 'z' (this gateway has: a, b)"},
    )
    assert side.served("/api/copy") == {"a": 0, "b": 0}
    named = httpx.post(url + "/api/copy", json=copy, headers={**auth, "X-Gateway-Upstream": "b"})
    assert named.status_code == 200
    assert side.served("/api/copy") == {"a": 0, "b": 1}
    # The header is the gateway's: Ollama never sees it.
    assert all(name.lower() != "x-gateway-upstream" for name, _ in side.fakes["b"].requests[-1].headers)
    side.wait_until(lambda: "registry.ollama.ai/library/mine:latest" in side.fleet.named("b").models, "copy learned")  # type: ignore[union-attr]
    assert side.chat("mine").status_code == 200


def test_a_request_that_gives_up_in_a_queue_leaves_nothing_counted(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]}, upstream_concurrency=1, queue_timeout=0.2)
    gate = StepGate()
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    member = side.fleet.named("a")
    assert member is not None
    with httpx.Client(base_url=side.gateway.url, headers=side.auth(), timeout=WAIT) as client:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        with held(client, body, gate):
            assert member.in_flight == 1
            refused = client.post("/api/chat", json={**body, "stream": False})
            assert refused.status_code == 503
            assert refused.json()["error"] == "the upstream is busy: no slot became free within 0.2 s"
            assert member.in_flight == 1
    side.wait_until(lambda: member.in_flight == 0, "the finished request uncounted")
    assert httpx.get(side.gateway.url + "/readyz").json()["upstreams"]["a"] == {
        "state": "up",
        "in_flight": 0,
        "queued": 0,
    }


def test_the_official_clients_stream_through_a_fleet(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    with ollama.Client(host=side.gateway.url, headers=side.auth()) as native:
        parts = native.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], stream=True, think=False)
        assert "".join(part.message.content or "" for part in parts) == "tok0 tok1 tok2 "
    with openai.OpenAI(base_url=side.gateway.url + "/v1", api_key=side.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "tok0 tok1 tok2 "
    assert side.served() == {"a": 0, "b": 1}
    assert side.served("/v1/chat/completions") == {"a": 1, "b": 0}


def test_a_model_deleted_behind_the_gateways_back_is_served_by_another(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]})
    side.fakes["a"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    side.fakes["a"].models = []  # straight on the server; the gateway still lists it there
    response = side.chat("llama3.2")
    # a's 404 means it did no work: the request goes to b, and a is asked for its models again.
    assert response.status_code == 200, response.text
    assert side.served() == {"a": 1, "b": 1}
    side.wait_until(lambda: not side.fleet.named("a").models, "a's models asked again")  # type: ignore[union-attr]
    assert side.chat("llama3.2").status_code == 200
    assert side.served() == {"a": 1, "b": 2}


def test_a_busy_loaded_copy_does_not_hold_up_a_server_that_is_free(make_fleet: Callable[..., Fleetside]) -> None:
    # a holds the model in memory but its one slot is taken; b has the model and a free slot.
    side = make_fleet({"a": ["llama3.2"], "b": ["llama3.2"]}, upstream_concurrency=1)
    side.fakes["a"].load("llama3.2")
    side.fleet.refresh_soon()
    side.wait_until(lambda: bool(side.fleet.named("a").loaded), "a's loaded model learned")  # type: ignore[union-attr]
    gate = StepGate()
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    with httpx.Client(base_url=side.gateway.url, headers=side.auth(), timeout=WAIT) as client:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        with held(client, body, gate):
            assert side.served() == {"a": 1, "b": 0}
            quick = client.post("/api/chat", json={**body, "stream": False})
            assert (quick.status_code, quick.headers["x-queue-position"]) == (200, "0")
            assert side.served() == {"a": 1, "b": 1}


def test_listings_when_no_server_answers_and_when_none_has_models(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": [], "b": []})
    url, auth = side.gateway.url, side.auth()
    # Ollama's own quirk survives the merge: no models is null on /v1/models, [] on /api/tags.
    assert httpx.get(url + "/v1/models", headers=auth).json() == {"object": "list", "data": None}
    assert httpx.get(url + "/api/tags", headers=auth).json() == {"models": []}
    assert httpx.head(url + "/api/tags", headers=auth).status_code == 200
    for fake in side.fakes.values():
        fake.stop()
    down = httpx.get(url + "/api/tags", headers=auth)
    assert down.status_code == 502
    assert down.json()["error"].startswith("no upstream answered /api/tags (a: upstream 127.0.0.1:")


def test_a_slow_server_does_not_hold_up_a_request_for_an_unknown_model(make_fleet: Callable[..., Fleetside]) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]})
    # b stops answering its listings: asking everyone about an unknown model must not wait for it.
    side.fakes["b"].behaviour = Behaviour(hang=True, paths=frozenset({"/api/version", "/api/tags", "/api/ps"}))
    started = time.monotonic()
    response = side.chat("nope")
    assert (response.status_code, response.json()) == (404, {"error": "model 'nope' not found"})
    assert time.monotonic() - started < 4  # the round is cut short at 2 s; the probe timeout is 10


def test_a_server_whose_connections_are_all_busy_is_not_taken_for_down(make_fleet: Callable[..., Fleetside]) -> None:
    # One connection per server and no queue: a second request finds the gateway's own cap reached.
    side = make_fleet(
        {"a": ["llama3.2"], "b": ["qwen3"]}, upstream_max_connections=1, upstream_concurrency=0, connect_timeout=0.3
    )
    gate = StepGate()
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    member = side.fleet.named("a")
    assert member is not None
    with httpx.Client(base_url=side.gateway.url, headers=side.auth(), timeout=WAIT) as client:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        with held(client, body, gate):
            busy = client.post("/api/chat", json={**body, "stream": False})
            assert busy.status_code == 503
            assert (
                busy.json()["error"]
                == f"upstream 127.0.0.1:{side.fakes['a'].port}: the gateway's connection limit is reached"
            )
            # Busy is not down: it keeps its state, and the listings still ask it.
            assert member.state is State.UP
            tags = client.get("/api/tags").json()["models"]
            assert sorted(m["name"] for m in tags) == ["llama3.2:latest", "qwen3:latest"]
    assert member.state is State.UP


def test_a_fleet_of_one_answers_as_its_server_alone(gateway: RunningGateway, fake: FakeOllama) -> None:
    """One server is a fleet of one, told apart only where users see it (``Fleet.solo``): nothing
    the gateway composes for several servers stands between a client and that server."""
    url, auth = gateway.url, gateway.auth
    # A model it lacks: its own 404 (with several, the gateway answers for a model none lists).
    missing = httpx.post(url + "/api/chat", json={**CHAT, "model": "nowhere"}, headers=auth, timeout=WAIT)
    # A listing: its own answer to what the client asked (a merged listing asks for the bare route).
    tags = httpx.get(url + "/api/tags?x=1", headers=auth, timeout=WAIT)
    # Model management: whatever X-Gateway-Upstream says, to it (with several: refused, or to every one).
    copy = {"source": "llama3.2", "destination": "mine"}
    named = {**auth, "X-Gateway-Upstream": "nowhere"}
    copied = httpx.post(url + "/api/copy", json=copy, headers=named, timeout=WAIT)
    deleted = httpx.request("DELETE", url + "/api/delete", json={"model": "mine"}, headers=auth, timeout=WAIT)
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nowhere' not found"})
    assert (tags.status_code, copied.status_code, deleted.status_code) == (200, 200, 200)
    assert [(r.method, r.path, r.query) for r in fake.requests] == [
        ("POST", "/api/chat", ""),
        ("GET", "/api/tags", "x=1"),
        ("POST", "/api/copy", ""),
        ("DELETE", "/api/delete", ""),
    ]
    assert all(name != "x-gateway-upstream" for name, _ in fake.requests[2].headers)
    ready = httpx.get(url + "/readyz", timeout=WAIT).json()
    # Its load is shown, never its name (its address).
    assert ready == {
        "status": "ready",
        "checks": {"upstream": "ok", "database": "ok"},
        "upstream": {"in_flight": 0, "queued": 0},
    }
