"""The usage chart and the live view in a real browser: twenty series each in a colour of its own
with its total in the legend before any hover, and requests queued behind a busy server shown as
queued, not in flight."""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.chromium import chromium
from tests.browser.pages import WAIT_MS, seed_usage, sign_in
from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama, StepGate
from tests.held import held_streams
from tests.servers import RunningGateway

expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
).expect

pytestmark = pytest.mark.timeout(120)

SERIES = 20  # the most the chart's API sends
# Two colours closer than this (CIELAB distance) are hard to tell apart in a small legend marker.
DISTINCT = 20.0


def _lab(css: str) -> tuple[float, float, float]:
    """An ``rgb(r, g, b)`` colour in CIELAB (D65)."""
    channels = [int(part) / 255 for part in re.findall(r"\d+", css)[:3]]
    r, g, b = ((c / 12.92) if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _legend(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#usage-chart .u-legend tr.u-series",
        """rows => rows.map(row => ({
            label: row.querySelector(".u-label").textContent,
            value: row.querySelector(".u-value").textContent,
            colour: getComputedStyle(row.querySelector(".u-marker")).backgroundColor,
        }))""",
    )


def test_twenty_series_have_twenty_colours_and_their_totals_without_a_hover(
    browser_gateway: RunningGateway, database_url: str, tmp_path: Path, shots: Callable[..., Path]
) -> None:
    gateway = browser_gateway
    names = [f"team-{n:02d}" for n in range(1, SERIES + 1)]
    for n, name in enumerate(names, start=1):
        seed_usage(database_url, name, days=3, tokens=100 * n)
    # Three days of (40 + 10 * back + extra) prompt and (25 + 5 * back) completion tokens.
    totals = {name: 240 + 3 * 100 * n for n, name in enumerate(names, start=1)}
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        page.goto(gateway.url + "/admin/#usage")
        page.wait_for_selector("#page-usage:not([hidden]) #usage-chart canvas")
        page.mouse.move(0, 0)  # nowhere near the chart
        legend = _legend(page)
        colours = [row["colour"] for row in legend[1:]]
        assert len(set(colours)) == SERIES
        closest = min(math.dist(_lab(a), _lab(b)) for a, b in itertools.combinations(colours, 2))
        assert closest >= DISTINCT, colours
        # Each series' total, with no hover.
        assert legend[0]["label"] == "Day"
        assert legend[0]["value"] == "Total"
        assert {row["label"]: row["value"] for row in legend[1:]} == {
            name: f"{total:,}" for name, total in totals.items()
        }
        # Under the cursor, one day's values; away from it, the totals again.
        box = page.locator("#usage-chart .u-over").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] / 2)  # today's bar
        day = page.locator("#usage-chart .u-legend tr.u-series").first.locator(".u-value")
        expect(day).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2}$"))
        today = {row["label"]: row["value"] for row in _legend(page)[1:]}
        assert today == {name: f"{40 + 25 + 100 * n:,}" for n, name in enumerate(names, start=1)}
        page.mouse.move(0, 0)
        expect(day).to_have_text("Total")
        shots(page, "usage")


def test_the_live_page_tells_queued_from_in_flight(
    make_gateway: Callable[..., RunningGateway], fake: FakeOllama, database_url: str, tmp_path: Path
) -> None:
    gateway = make_gateway(upstream_concurrency=1)
    key = issue_key(database_url, "busy")
    gate = StepGate(timeout=30)
    fake.behaviour = Behaviour(tokens=3, gate=gate)
    with (
        chromium(tmp_path / "profile") as browser,
        httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin,
        held_streams(gateway.url, key, "llama3.2", 2, gate) as statuses,
    ):
        # One runs on the only slot, the other waits for it.
        deadline = time.monotonic() + 10
        while admin.get("/live").json()["queue"]["waiting"] != 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.02)
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        page.goto(gateway.url + "/admin/#live")
        page.locator("#live-keys").get_by_text("busy").wait_for()
        assert (page.inner_text("#live-in-flight"), page.inner_text("#live-waiting")) == ("1", "1")
        assert page.inner_text("#live-capacity") == "1"
        key_row = page.locator("#live-keys tbody tr").all_inner_texts()
        assert [row.split("\t") for row in key_row] == [["busy", key.split("_")[1], "1", "1"]]
        upstream = page.locator("#live-upstreams tbody tr td").all_inner_texts()
        assert upstream[3:5] == ["1", "1"]  # in flight, queued: as the cap allows
    assert statuses == [200, 200]
