"""The browser tests' fixtures: a gateway for the page, and screenshots (README's come from them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import RunningGateway

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser_gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    # Usage reaches the database quickly here, so the chart can show a request made a moment ago.
    return make_gateway(usage_flush_interval=0.1, log_format="json", public_url="https://gpu.example.com")


@pytest.fixture
def shots(tmp_path: Path) -> Callable[..., Path]:
    """Takes a screenshot into the test's temp dir (and GATEWAY_SCREENSHOTS_DIR, if set)."""
    keep = os.environ.get("GATEWAY_SCREENSHOTS_DIR")

    def take(page: object, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        data = path.read_bytes()
        assert data.startswith(PNG)
        assert len(data) > 10_000  # a rendered page, not a blank one
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"admin-{name}.png").write_bytes(data)
        return path

    return take
