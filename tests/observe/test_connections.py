"""The connection guard: the descriptor a connection arrives as says how many are open; past the
limit minus the reserve it is refused, counted every time and logged once per burst."""

from __future__ import annotations

import logging

import pytest

from gateway.observe.connections import ConnectionGuard


def test_refusals_are_counted_each_time_and_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    refused: list[None] = []
    guard = ConnectionGuard(on_refused=lambda: refused.append(None), limit=1024, reserve=32, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gateway.connections"):
        assert guard.admits(991)
        assert [guard.admits(992), guard.admits(1000), guard.admits(1023)] == [False, False, False]
        now[0] += 9.9  # still the same burst: refusals less than 10 s apart
        assert not guard.admits(995)
        now[0] += 10.0  # quiet for 10 s: a new burst
        assert not guard.admits(996)
    assert len(refused) == 5
    assert [record.getMessage().split(" may open")[0] for record in caplog.records] == [
        "refusing new connections with 503: at least 993 of the 1024 file descriptors this process",
        "refusing new connections with 503: at least 997 of the 1024 file descriptors this process",
    ]


def test_a_small_limit_keeps_half_and_no_limit_refuses_nothing() -> None:
    small = ConnectionGuard(on_refused=lambda: None, limit=40, reserve=32)
    assert (small.admits(19), small.admits(20)) == (True, False)
    assert ConnectionGuard(on_refused=lambda: None, limit=None).admits(1 << 20)
