"""Prometheus metrics: values move by exactly what each request contributes; /metrics is guarded."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import prometheus_client
import pytest

from gateway.keys.store import Scope
from gateway.observe.metrics import Metrics
from gateway.observe.record import RequestRecord
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.servers import RunningGateway, free_port, gateway_process

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
RECORD_TIMEOUT = 5.0


class Samples:
    """Reads the gateway's registry; ``delta`` is the change since the last ``snapshot``."""

    def __init__(self, gateway: RunningGateway) -> None:
        self._metrics = gateway.app.metrics
        self._before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def value(self, name: str, **labels: str) -> float:
        return self._metrics.registry.get_sample_value(name, labels) or 0.0

    def snapshot(self, *series: tuple[str, dict[str, str]]) -> None:
        self._before = {(name, tuple(sorted(labels.items()))): self.value(name, **labels) for name, labels in series}

    def deltas(self) -> dict[str, float]:
        return {
            name + str(dict(labels)): self.value(name, **dict(labels)) - before
            for (name, labels), before in self._before.items()
        }

    def wait_for(self, name: str, target: float, **labels: str) -> None:
        """Records reach the sinks just after the last byte: poll (no event exists) until counted."""
        deadline = time.monotonic() + RECORD_TIMEOUT
        while self.value(name, **labels) < target:
            assert time.monotonic() < deadline, f"{name}{labels} never reached {target}"
            time.sleep(0.01)


def _series(
    key: str, status: str, route_class: str = "inference", upstream: str = ""
) -> list[tuple[str, dict[str, str]]]:
    requests = {"route_class": route_class, "route": "/api/chat", "status": status, "key": key, "upstream": upstream}
    return [
        ("gateway_requests_total", requests),
        ("gateway_tokens_total", {"key": key, "model": "llama3.2:latest", "kind": "prompt"}),
        ("gateway_tokens_total", {"key": key, "model": "llama3.2:latest", "kind": "completion"}),
        ("gateway_request_duration_seconds_count", {"route_class": route_class}),
        ("gateway_time_to_first_byte_seconds_count", {"route_class": route_class}),
        ("gateway_queue_wait_seconds_count", {}),
        ("gateway_refusals_total", {"reason": "unauthorized"}),
        ("gateway_refusals_total", {"reason": "forbidden"}),
        ("gateway_upstream_errors_total", {"kind": "upstream_error"}),
        ("gateway_upstream_errors_total", {"kind": "upstream_timeout"}),
    ]


def _changed(samples: Samples) -> dict[str, float]:
    return {name: delta for name, delta in samples.deltas().items() if delta}


def test_a_streamed_request(gateway: RunningGateway, fake: FakeOllama, database_url: str) -> None:
    fake.behaviour = Behaviour(tokens=3, prompt_eval_count=7)
    key = issue_key(database_url, "metered")
    samples = Samples(gateway)
    upstream = f"127.0.0.1:{fake.port}"  # one server, named by its address
    samples.snapshot(*_series("metered", "200", upstream=upstream))
    response = httpx.post(gateway.url + "/api/chat", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    requests = {
        "route_class": "inference",
        "route": "/api/chat",
        "status": "200",
        "key": "metered",
        "upstream": upstream,
    }
    samples.wait_for("gateway_requests_total", 1, **requests)
    assert _changed(samples) == {
        "gateway_requests_total" + str(dict(sorted(requests.items()))): 1,
        "gateway_tokens_total{'key': 'metered', 'kind': 'prompt', 'model': 'llama3.2:latest'}": 7,
        "gateway_tokens_total{'key': 'metered', 'kind': 'completion', 'model': 'llama3.2:latest'}": 3,
        "gateway_request_duration_seconds_count{'route_class': 'inference'}": 1,
        "gateway_time_to_first_byte_seconds_count{'route_class': 'inference'}": 1,
        "gateway_queue_wait_seconds_count{}": 1,
    }


def test_refusals(gateway: RunningGateway, fake: FakeOllama, database_url: str) -> None:
    reader = issue_key(database_url, "reader", scopes=frozenset({Scope.READ}))
    samples = Samples(gateway)
    samples.snapshot(*_series("", "401"), *_series("reader", "403"))
    assert httpx.post(gateway.url + "/api/chat", json=CHAT).status_code == 401
    response = httpx.post(gateway.url + "/api/chat", json=CHAT, headers={"Authorization": f"Bearer {reader}"})
    assert response.status_code == 403
    forbidden = {"route_class": "inference", "route": "/api/chat", "status": "403", "key": "reader", "upstream": ""}
    samples.wait_for("gateway_requests_total", 1, **forbidden)
    # Refused before reaching the upstream: no first byte, no queue wait, no tokens.
    unauthorized = {**forbidden, "status": "401", "key": ""}
    assert _changed(samples) == {
        "gateway_requests_total" + str(dict(sorted(unauthorized.items()))): 1,
        "gateway_requests_total" + str(dict(sorted(forbidden.items()))): 1,
        "gateway_request_duration_seconds_count{'route_class': 'inference'}": 2,
        "gateway_refusals_total{'reason': 'unauthorized'}": 1,
        "gateway_refusals_total{'reason': 'forbidden'}": 1,
    }


def test_upstream_errors(make_gateway: Callable[..., RunningGateway], fake: FakeOllama) -> None:
    gateway = make_gateway(read_timeout=0.5)
    samples = Samples(gateway)
    upstream_error = ("gateway_upstream_errors_total", {"kind": "upstream_error"})
    timeout = ("gateway_upstream_errors_total", {"kind": "upstream_timeout"})
    samples.snapshot(upstream_error, timeout)
    for behaviour, status in [
        (Behaviour(status=500), 500),
        (Behaviour(tokens=5, cut_after=2), 200),
        (Behaviour(tokens=5, fail_after=1), 200),
        (Behaviour(hang=True), 504),
    ]:
        fake.behaviour = behaviour
        assert httpx.post(gateway.url + "/api/chat", json=CHAT, headers=gateway.auth, timeout=10).status_code == status
    samples.wait_for("gateway_upstream_errors_total", 1, kind="upstream_timeout")
    samples.wait_for("gateway_upstream_errors_total", 3, kind="upstream_error")
    assert samples.deltas() == {
        "gateway_upstream_errors_total{'kind': 'upstream_error'}": 3,
        "gateway_upstream_errors_total{'kind': 'upstream_timeout'}": 1,
    }


def _scrape(gateway: RunningGateway) -> dict[str, float]:
    response = httpx.get(gateway.url + "/metrics", headers=gateway.auth)
    assert response.status_code == 200
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_requests_in_flight(gateway: RunningGateway, fake: FakeOllama) -> None:
    gate = StepGate()
    fake.behaviour = Behaviour(tokens=3, gate=gate)
    assert _scrape(gateway)["gateway_requests_in_flight"] == 0
    with (
        httpx.Client(base_url=gateway.url, headers=gateway.auth, timeout=10) as client,
        client.stream("POST", "/api/chat", json=CHAT) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        assert _scrape(gateway)["gateway_requests_in_flight"] == 1
        gate.release(10)
        list(lines)
    deadline = time.monotonic() + RECORD_TIMEOUT
    while _scrape(gateway)["gateway_requests_in_flight"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_metrics_need_an_admin_key(gateway: RunningGateway, fake: FakeOllama, database_url: str) -> None:
    ordinary = issue_key(database_url, "ordinary")
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    refused = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ordinary}"})
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "this API key lacks the 'admin' scope required for /metrics"},
    )
    allowed = httpx.get(gateway.url + "/metrics", headers=gateway.auth)
    assert allowed.status_code == 200
    assert allowed.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert "# TYPE gateway_requests_total counter" in allowed.text


def test_metrics_share_the_forwarded_routes_authenticator_and_lockout(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama
) -> None:
    gateway = make_gateway(auth_failure_limit=2, auth_failure_window=60, trusted_proxies=("127.0.0.1",))
    behind = {"X-Forwarded-For": "203.0.113.7"}
    bad = {**behind, "Authorization": "Bearer ogw_nope"}
    # Two failures on a forwarded route lock the client (as a trusted proxy names it) out...
    assert [httpx.get(gateway.url + "/api/tags", headers=bad).status_code for _ in range(2)] == [401, 401]
    # ...of /metrics too for wrong keys, while the right key from there is still let in.
    locked = httpx.get(gateway.url + "/metrics", headers=bad)
    assert locked.status_code == 429
    assert locked.json()["error"].startswith("too many failed authentication attempts")
    assert httpx.get(gateway.url + "/metrics", headers={**gateway.auth, **behind}).status_code == 200
    other = httpx.get(gateway.url + "/metrics", headers={**bad, "X-Forwarded-For": "203.0.113.8"})
    assert other.status_code == 401


def test_metrics_on_their_own_address(fake: FakeOllama, database_url: str) -> None:
    key = issue_key(database_url, "someone")
    port = free_port()
    env = {
        "GATEWAY_UPSTREAM_URL": fake.url,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_METRICS_ADDRESS": f"127.0.0.1:{port}",
    }
    with gateway_process(env) as process:
        assert httpx.get(process.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        # Not on the main port, even for an admin key; no key needed on the metrics address.
        assert httpx.get(process.url + "/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 404
        labels = f'key="someone",route="/api/tags",route_class="read",status="200",upstream="127.0.0.1:{fake.port}"'
        deadline = time.monotonic() + RECORD_TIMEOUT
        while f"gateway_requests_total{{{labels}}} 1.0" not in (text := _side(port)):
            assert time.monotonic() < deadline, text
            time.sleep(0.01)


def _side(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return response.text


def _record(model: str) -> RequestRecord:
    return RequestRecord(
        time=0.0,
        request_id="r",
        key_id="k",
        key_name="alice",
        client="192.0.2.1",
        method="POST",
        path="/api/chat",
        route="/api/chat",
        route_class="inference",
        model=model,
        status=200,
        upstream_status=200,
        bytes_in=1,
        bytes_out=1,
        duration=0.1,
        ttfb=0.05,
        overhead=0.001,
        queue_wait=0.0,
        forwarded=True,
        streamed=True,
        prompt_tokens=2,
        completion_tokens=1,
        tokens_exact=True,
        outcome="ok",
    )


def test_model_labels_are_capped_and_the_registry_is_private() -> None:
    metrics = Metrics(max_models=2)
    for model in ("a:latest", "b:latest", "c:latest", "d:latest", "a:latest"):
        metrics(_record(model))

    def prompt_tokens(model: str) -> float | None:
        labels = {"key": "alice", "model": model, "kind": "prompt"}
        return metrics.registry.get_sample_value("gateway_tokens_total", labels)

    prompt = {model: prompt_tokens(model) for model in ("a:latest", "b:latest", "c:latest", "other")}
    assert prompt == {"a:latest": 4, "b:latest": 2, "c:latest": None, "other": 4}
    # A second instance does not clash, and nothing reaches the process-global registry.
    Metrics()(_record("a:latest"))
    assert prometheus_client.REGISTRY.get_sample_value("gateway_requests_total", {}) is None
    assert "gateway_requests" not in {metric.name for metric in prometheus_client.REGISTRY.collect()}
