"""What the browser tests share: signing in on the page, bounded waits, usage in the database."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.servers import RunningGateway

WAIT_MS = 10_000


def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``check`` until it holds, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def seed_usage(database_url: str, name: str, days: int, tokens: int = 0) -> None:
    """``days`` days of usage for the key ``name``, up to today; ``tokens`` more on each."""
    today = dt.datetime.now(dt.UTC).date()
    store = open_usage_store(database_url)
    try:
        store.add(
            {
                UsageKey((today - dt.timedelta(days=back)).isoformat(), f"id-{name}", name, "qwen3:8b"): UsageCounts(
                    2, 40 + 10 * back + tokens, 25 + 5 * back, 0
                )
                for back in range(days)
            }
        )
    finally:
        store.close()


def sign_in(page: Any, gateway: RunningGateway, key: str | None = None) -> None:
    page.goto(gateway.url + "/admin/")
    page.fill("#signin-key", key or gateway.key)
    page.click("#signin-form button")
    page.wait_for_selector("#page-keys:not([hidden]) tr[data-key]")
