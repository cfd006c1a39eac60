"""One meaning of "in flight" (running on a server, past its fair queue) and "queued" (waiting in
it), the same in ``/admin/api/live``, ``/readyz`` and the metrics, with a real queue: a key's
streams held by the fake, more of them than its server has slots."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FLEET_WAIT, Fleetside, issue_key
from tests.fake_ollama import Behaviour, StepGate
from tests.held import held_streams

pytestmark = pytest.mark.timeout(60)


def until_live(admin: httpx.Client, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``/admin/api/live`` once ``check`` holds for it (bounded)."""
    deadline = time.monotonic() + FLEET_WAIT
    live: dict[str, Any] = admin.get("/live").json()
    while not check(live):
        assert time.monotonic() < deadline, live
        time.sleep(0.02)
        live = admin.get("/live").json()
    return live


def metrics(side: Fleetside) -> dict[tuple[str, str], float]:
    """Each gauge sample by its name and ``upstream`` label (empty for none)."""
    text = httpx.get(side.gateway.url + "/metrics", headers=side.auth()).text
    return {
        (sample.name, sample.labels.get("upstream", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.type == "gauge"
    }


def test_queued_requests_are_not_in_flight_anywhere(make_fleet: Callable[..., Fleetside], tmp_path: Path) -> None:
    side = make_fleet({"a": ["llama3.2"], "b": ["qwen3"]}, upstream_concurrency=2)
    key = issue_key(f"sqlite:///{tmp_path / 'gateway.db'}", "busy")  # the fleet's database
    key_id = key.split("_")[1]
    gate = StepGate(timeout=FLEET_WAIT * 2)
    side.fakes["a"].behaviour = Behaviour(tokens=3, gate=gate)
    with (
        httpx.Client(base_url=side.gateway.url + "/admin/api", headers=side.auth(), timeout=10) as admin,
        held_streams(side.gateway.url, key, "llama3.2", 3, gate) as statuses,
    ):
        # Two run on a's two slots, the third waits for one.
        live = until_live(admin, lambda live: live["queue"]["waiting"] == 1)
        assert live["in_flight"] == 2
        assert live["keys"] == [{"key_id": key_id, "key_name": "busy", "in_flight": 2, "queued": 1}]
        assert live["queue"]["capacity"] == 4
        assert {item["name"]: (item["in_flight"], item["queued"]) for item in live["upstreams"]} == {
            "a": (2, 1),
            "b": (0, 0),
        }
        assert httpx.get(side.gateway.url + "/readyz").json()["upstreams"] == {
            "a": {"state": "up", "in_flight": 2, "queued": 1},
            "b": {"state": "up", "in_flight": 0, "queued": 0},
        }
        gauges = metrics(side)
        assert gauges[("gateway_requests_in_flight", "")] == 2
        assert gauges[("gateway_upstream_requests_in_flight", "a")] == 2
        assert gauges[("gateway_queue_depth", "a")] == 1
        assert gauges[("gateway_upstream_requests_in_flight", "b")] == 0
        assert statuses == []
    assert statuses == [200, 200, 200]
    with httpx.Client(base_url=side.gateway.url + "/admin/api", headers=side.auth(), timeout=10) as admin:
        live = until_live(admin, lambda live: live["in_flight"] == 0)
    assert (live["keys"], live["queue"]["waiting"]) == ([], 0)
