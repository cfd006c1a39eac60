"""The keys table in a real browser at scale and at the edges: ten thousand keys (found and paged
by the server, a page of rows at a time), limits up to 2^63-1 shown digit for digit, and long values that stay
inside the table's card in a 1280 px window."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.keys.store import Limits
from tests.browser.chromium import chromium
from tests.browser.pages import WAIT_MS, sign_in
from tests.conftest import issue_key, issue_keys
from tests.servers import RunningGateway

expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
).expect

pytestmark = pytest.mark.timeout(120)

LARGEST = 2**63 - 1  # as JS numbers, 9223372036854775807 reads as 9223372036854776000
MANY = 10_000
DASH = "\N{EN DASH}"  # between the first and last row shown


def _rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#keys-table tbody tr", "rows => rows.map(row => row.dataset.key)")  # type: ignore[no-any-return]


def test_limits_up_to_the_largest_are_shown_and_sent_exactly(
    browser_gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    gateway = browser_gateway
    issue_key(database_url, "huge", limits=Limits(rpm=LARGEST, tpd=2**53 + 1, concurrency=2**53))
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        shown = page.inner_text("tr[data-key='huge']")
        for limit in ("rpm=9223372036854775807", "tpd=9007199254740993", "concurrency=9007199254740992"):
            assert limit in shown
        assert page.locator("tr[data-key='huge'] .limits span").all_inner_texts() == [
            "rpm=9223372036854775807",
            "tpd=9007199254740993",
            "concurrency=9007199254740992",
        ]
        # Typed into the form, the largest limit reaches the server as typed.
        page.click("#create-box summary")
        page.fill("#create-form [name=name]", "typed")
        page.fill("#create-form [name=tpm]", str(LARGEST))
        page.fill("#create-form [name=tpd]", str(2**60 + 1))
        page.click("#create-form button[type=submit]")
        page.wait_for_selector("#secret-panel:not([hidden])")
        typed = page.locator("tr[data-key='typed'] .limits span").all_inner_texts()
        assert typed == [f"tpm={LARGEST}", f"tpd={2**60 + 1}"]
    listed = httpx.get(gateway.url + "/admin/api/keys", headers=gateway.auth).json()
    stored = next(item["limits"] for item in listed if item["name"] == "typed")
    assert (stored["tpm"], stored["tpd"]) == (LARGEST, 2**60 + 1)


def test_ten_thousand_keys_are_found_and_paged_by_the_server(
    browser_gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    gateway = browser_gateway
    issue_keys(database_url, [f"user-{n:05d}" for n in range(MANY)])
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        asked: list[str] = []  # every key listing the page asks for
        page.on(
            "request",
            lambda request: (
                asked.append(request.url)
                if request.method == "GET" and urlsplit(request.url).path.endswith("/api/keys")
                else None
            ),
        )
        sign_in(page, gateway)
        count, pages = page.locator("#keys-count"), page.locator("#keys-page")
        # One page of rows, asked of the server: the page never holds (or fetches) every key.
        expect(count).to_have_text(f"1{DASH}50 of 10,001 keys")
        assert _rows(page) == ["test-admin-0", *(f"user-{n:05d}" for n in range(49))]
        expect(pages).to_have_text("Page 1 of 201")
        assert page.is_disabled("#keys-prev")
        # Creating a key is at the top, not below ten thousand rows.
        assert page.evaluate("scrollY") == 0
        summary = page.locator("#create-box summary").bounding_box()
        assert summary is not None
        assert summary["y"] + summary["height"] < 600
        page.click("#keys-next")
        expect(count).to_have_text(f"51{DASH}100 of 10,001 keys")
        assert _rows(page)[0] == "user-00049"
        # Typed at once, nine keystrokes make one search (the server is asked once typing pauses),
        # and it starts from the first page.
        before = len(asked)
        page.locator("#keys-filter").press_sequentially("user-0999")
        expect(count).to_have_text(f"1{DASH}10 of 10 matching keys")
        assert _rows(page) == [f"user-0999{n}" for n in range(10)]
        assert len(asked) - before <= 2
        expect(pages).to_have_text("Page 1 of 1")
        assert page.is_disabled("#keys-next")
        page.fill("#keys-filter", "no such key")
        expect(page.locator("#keys-table tbody")).to_have_text("No key matches the filter.")
        expect(count).to_have_text("0 matching keys")
        # Words narrow each other; case does not matter; a status is a word like the others.
        page.fill("#keys-filter", "ACTIVE user-0000")
        expect(count).to_have_text(f"1{DASH}10 of 10 matching keys")
        assert _rows(page) == [f"user-0000{n}" for n in range(10)]
        # A key created while a filter hides it is shown all the same, above the page (which
        # stays as it was, filter and all).
        page.click("#create-box summary")
        page.fill("#create-form [name=name]", "zz-new")
        page.click("#create-form button[type=submit]")
        expect(page.locator("#keys-table tbody tr").first).to_have_attribute("data-key", "zz-new")
        assert _rows(page) == ["zz-new", *(f"user-0000{n}" for n in range(10))]
        assert page.input_value("#keys-filter") == "ACTIVE user-0000"
        expect(count).to_have_text(f"1{DASH}10 of 10 matching keys")
        # Found where it belongs by the next search.
        page.fill("#keys-filter", "zz-")
        expect(count).to_have_text(f"1{DASH}1 of 1 matching keys")
        assert _rows(page) == ["zz-new"]
    # Every listing the page asked for was one page of keys (or sign-in's check of the key: one).
    assert asked
    assert [url for url in asked if parse_qs(urlsplit(url).query).get("limit") not in (["50"], ["1"])] == []


LONG_NAME = "platform-evaluation-nightly-batch-runner-eu-west-1-canary-000002"
LONG_MODELS = ("registry.example.com/research/very-long-model-family-name-*:latest", "qwen3:235b-a22b-instruct-*")


def test_long_values_stay_inside_the_card_at_1280_px(
    browser_gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    gateway = browser_gateway
    assert len(LONG_NAME) == 64  # the longest name there is
    everything = Limits(rpm=LARGEST, tpm=LARGEST, tpd=LARGEST, concurrency=LARGEST, weight=100)
    issue_key(database_url, LONG_NAME, models=LONG_MODELS, limits=everything)
    issue_key(database_url, "w" * 64, limits=everything)
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        assert page.viewport_size == {"width": 1280, "height": 600}
        # No sideways scrolling, and every cell holds its text (nothing spills into the next one).
        assert page.evaluate("document.documentElement.scrollWidth") == 1280
        spilled = page.eval_on_selector_all(
            "#keys-table td, #keys-table td *", "cells => cells.filter(c => c.scrollWidth > c.clientWidth).length"
        )
        assert spilled == 0
        card = page.locator("#keys-card").bounding_box()
        assert card is not None
        assert card["x"] + card["width"] <= 1280
        for name in (LONG_NAME, "w" * 64):
            row = page.locator(f"tr[data-key='{name}']")
            assert row.locator(".name").inner_text() == name  # wrapped, not cut
            for part in (row.locator("button.danger"), row.locator("button.quiet"), row.locator(".limits"), row):
                box = part.bounding_box()
                assert box is not None
                assert card["x"] <= box["x"]
                assert box["x"] + box["width"] <= card["x"] + card["width"], name


def test_every_label_of_the_create_form_is_seen_whole(browser_gateway: RunningGateway, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, browser_gateway)
        page.click("#create-box summary")
        # Nothing of the form lies on another part of it (the scopes once spilled under the next
        # field, which hid "admin")...
        overlapping = page.eval_on_selector_all(
            "#create-form .grid > *",
            """items => {
                const word = (node) => node.textContent.trim().split(/\\s+/)[0];
                return items.flatMap((item, i) => items.slice(i + 1).filter(other => {
                    const a = item.getBoundingClientRect(), b = other.getBoundingClientRect();
                    return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
                }).map(other => word(item) + " / " + word(other)));
            }""",
        )
        assert overlapping == []
        # ... and every label is on top, end to end, within its part of the form.
        hidden = page.eval_on_selector_all(
            "#create-form label, #create-form legend",
            """labels => labels.filter(label => {
                const box = label.getBoundingClientRect();
                const y = box.top + Math.min(box.height / 2, 8);
                return [box.left + 1, box.left + box.width / 2, box.right - 1].some(x => {
                    const found = document.elementFromPoint(x, y);
                    return !(found && (label.contains(found) || found.contains(label)));
                }) || label.scrollWidth > label.clientWidth;
            }).map(label => label.textContent.trim())""",
        )
        assert hidden == []
        admin = page.locator("#create-form label.inline", has_text="admin").bounding_box()
        fieldset = page.locator("#create-form fieldset").bounding_box()
        assert admin is not None
        assert fieldset is not None
        assert admin["x"] + admin["width"] <= fieldset["x"] + fieldset["width"]
