"""The benchmark harness and the soak, run at smoke size against the real gateway, so they never rot.

Only the shape of the report is checked here (every scenario ran, every figure is a number, no
chunk was lost, for the gateway in front of one fast upstream and in front of three; in the soak,
every stream ended as its kind must): the figures themselves mean nothing at this size and on a
shared machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import procstat
from bench.floor import FIGURES, nginx_binary
from bench.floor import order as floor_order
from bench.floor import summary as floor_summary
from bench.goals import check
from bench.plan import SCALE_QUICK
from bench.scalereport import NOISE_FLOOR, ROWS

ROOT = Path(__file__).resolve().parent.parent
RSS_GOAL = "soak: gateway RSS at the end <= 1.10 x after the first minute"
SCALE_SIZES = {
    "keys": SCALE_QUICK.key_counts,
    "models": SCALE_QUICK.model_counts,
    "usage": SCALE_QUICK.usage_rows,
    "upstreams": SCALE_QUICK.upstream_counts,
    "streams": SCALE_QUICK.stream_counts,
}


# One benchmark at a time (make unit runs two test workers): each loads a core of its own.
pytestmark = pytest.mark.xdist_group("bench")


def _numeric(spread: Any) -> bool:
    return isinstance(spread, dict) and all(
        isinstance(spread[stat], int | float) and math.isfinite(spread[stat]) for stat in ("median", "min", "max")
    )


def _run(module: str, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m module argv`` from the checkout, its output kept for the assertion messages."""
    return subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.timeout(60)
def test_quick_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # One gateway in front of one fast upstream, one in front of three: the same harness, and the
    # comparison between them, at the cost of a few seconds.
    argv = ["--quick", "--no-pin", "--upstreams", "1,3", "--max-minutes", "0.75", "--out", str(out)]
    done = _run("bench", *argv, timeout=55)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert set(report["scenarios"]) == {"a", "b", "c", "d"}
    assert report["meta"]["upstreams"] == [1, 3]
    assert [(side["side"], side["upstreams"]) for side in report["meta"]["sides"]] == [
        ("gateway", 1),
        ("gateway_3up", 3),
    ]
    assert set(report["meta"]["sides"][1]["settings"]) >= {"GATEWAY_UPSTREAMS"}
    for key, scenario in report["scenarios"].items():
        assert scenario["error"] is None, (key, scenario["error"])
        assert scenario["cases"], key
        for case in scenario["cases"]:
            three = case["sides"]["gateway_3up"]
            for name, figures in [(side, case[side]) for side in ("direct", "gateway", "vs_direct")] + [
                (f"3up {side}", three[side]) for side in ("gateway", "vs_direct")
            ]:
                assert figures, (key, case["case"], name)
                bad = [figure for figure, spread in figures.items() if not _numeric(spread)]
                assert bad == [], (key, case["case"], name)
            for figures in (case["direct"], case["gateway"], three["gateway"]):
                # Unpinned (--no-pin), steal is read over all CPUs.
                assert "steal_machine_pct" in figures, (key, case["case"])
            # 3 upstreams over 1, for every figure compared with direct, and the gateway's own.
            expected = {f"{name}_ratio" for name in scenario["gateway_figures"]}
            for name, kind in scenario["compare"].items():
                expected |= {f"{name}_added_ratio", f"{name}_added_diff"} if kind == "added" else {f"{name}_ratio"}
            assert set(three["vs_gateway"]) == expected, (key, case["case"])

    for case in report["scenarios"]["a"]["cases"]:
        assert case["sides"]["gateway_3up"]["vs_gateway"]["gateway_cpu_ms_per_request_ratio"]["of_medians"] > 0
    for case in report["scenarios"]["b"]["cases"]:
        for figures in (case["direct"], case["gateway"], case["sides"]["gateway_3up"]["gateway"]):
            assert figures["chunks_lost"]["max"] == 0
            assert figures["out_of_order"]["max"] == 0
            for failure in ("streams_refused", "streams_cut", "streams_unfinished"):
                assert figures[failure]["max"] == 0, failure
            assert figures["chunks"]["min"] == case["params"]["streams"] * case["params"]["tokens"]
    for scenario in ("c", "d"):
        case = report["scenarios"][scenario]["cases"][0]
        for figures in (case["direct"], case["gateway"], case["sides"]["gateway_3up"]["gateway"]):
            if scenario == "c":
                assert figures["status"]["min"] == 201
            else:
                assert figures["unseen"]["max"] == 0

    assert report["meta"]["features"]
    # Every goal row of a scenario says how much steal its runs saw.
    assert all(isinstance(goal["steal_max_pct"], float) for goal in report["goals"] if goal["case"] != "whole run")
    assert set(report["meta"]["steal_pct"]) == set(procstat.steal_ms()) - {"cpu"}
    assert out.with_suffix(".md").read_text().startswith("# ollama-gateway benchmark")


@pytest.mark.timeout(60)
def test_quick_large_body_scenario_reports_both_stalls(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--no-pin", "--scenarios", "e", "--max-minutes", "0.75", "--out", str(out)]
    done = _run("bench", *argv, timeout=55)
    assert out.exists(), done.stderr[-4000:]
    scenario = json.loads(out.read_text())["scenarios"]["e"]
    assert scenario["error"] is None
    assert [case["case"] for case in scenario["cases"]] == [
        "10,000 members, /api/chat",
        "10,000 members, /v1/chat/completions stream",
        "1 MiB image, /api/chat",
    ]
    for case in scenario["cases"]:
        for side in ("direct", "gateway"):
            figures = case[side]
            assert _numeric(figures["stream_stall_ms"]), (case["case"], side)
            assert _numeric(figures["healthz_max_ms"]), (case["case"], side)
            assert figures["stream_chunks"]["min"] > 0
            assert figures["healthz_polls"]["min"] > 0
        assert case["gateway"]["attack_status"]["min"] in (200, 400)
        assert set(case["vs_direct"]) == {"stream_stall_ms_added", "healthz_max_ms_added"}


@pytest.mark.timeout(90)
def test_quick_scale_scenario_reports_every_size(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = ["--scale", "--quick", "--no-pin", "--max-minutes", "1.25", "--out", str(out)]
    done = _run("bench", *argv, timeout=85)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["error"] is None

    # Every size of every thing that grows, on the gateway; the direct references beside them.
    sides = {(run["group"], run["size"], run["side"]) for run in report["runs"]}
    assert sides == {
        *((group, size, "gateway") for group, sizes in SCALE_SIZES.items() for size in sizes),
        ("keys", 10, "direct"),
        ("models", 2, "direct"),
        ("models", 50, "direct"),
    }
    rows = {(entry["group"], entry["size"], entry["figure"]): entry for entry in report["figures"]}
    expected = {
        (group, size, figure) for group, sizes in SCALE_SIZES.items() for size in sizes for figure, *_ in ROWS[group]
    }
    assert set(rows) == expected
    for key, entry in rows.items():
        assert _numeric(entry["value"]), key
    for group, sizes in SCALE_SIZES.items():
        for figure, _, against in ROWS[group]:
            if "size" in against:
                # Every size has its ratio; the smallest against itself is exactly 1 (or, within
                # the noise, at most 1: the ratio is then to the noise floor).
                ratios = [rows[(group, size, figure)]["vs_smallest"]["of_medians"] for size in sizes]
                assert all(math.isfinite(ratio) for ratio in ratios), (group, figure)
                assert ratios[0] == 1.0 or (figure in NOISE_FLOOR and ratios[0] <= 1.0), (group, figure)
            if "direct" in against:
                assert all(math.isfinite(rows[(group, size, figure)]["over_direct"]["of_medians"]) for size in sizes)
    # The stores were filled to the sizes named.
    notes = "; ".join(report["meta"]["notes"])
    for count in SCALE_QUICK.key_counts:
        assert f"{count:,} keys written" in notes
    for count in SCALE_QUICK.usage_rows:
        assert f"{count:,} usage rows written" in notes
    for failed in ("requests_failed", "tags_failed", "globs_tags_failed", "request_failed"):
        assert all(rows[key]["value"]["max"] == 0 for key in rows if key[2] == failed), failed
    for lost in ("ndjson_chunks_lost", "sse_chunks_lost"):
        assert all(rows[key]["value"]["max"] == 0 for key in rows if key[2] == lost), lost
    table = out.with_suffix(".md").read_text()
    assert table.startswith("# ollama-gateway scale benchmark")
    assert table.count("\n| keys in the store | 200 |") == len(ROWS["keys"])


def _ratio(of_medians: float) -> dict[str, Any]:
    return {"median": of_medians, "min": of_medians, "max": of_medians, "runs": [of_medians], "of_medians": of_medians}


@pytest.mark.parametrize(("cpu", "added", "met"), [(1.08, 1.10, [True, True]), (1.11, 0.9, [False, True])])
def test_three_upstreams_are_judged_against_one(cpu: float, added: float, met: list[bool]) -> None:
    def case(concurrency: int) -> dict[str, Any]:
        steal = {"steal_machine_pct": {"median": 0.0, "min": 0.0, "max": 0.5, "runs": [0.5]}}
        vs_gateway = {"gateway_cpu_ms_per_request_ratio": _ratio(cpu), "latency_p50_ms_added_ratio": _ratio(added)}
        return {
            "case": f"/api/chat c={concurrency}",
            "params": {"path": "/api/chat", "concurrency": concurrency},
            "direct": steal,
            "gateway": steal,
            "vs_direct": {},
            "sides": {"gateway_3up": {"gateway": steal, "vs_direct": {}, "vs_gateway": vs_gateway}},
        }

    sides = [{"side": "gateway", "upstreams": 1}, {"side": "gateway_3up", "upstreams": 3}]
    report = {"meta": {"sides": sides}, "scenarios": {"a": {"cases": [case(1), case(16)]}}}
    rows = [row for row in check(report) if row["goal"].startswith("3 upstreams vs 1 upstream")]
    assert [(row["case"], row["value"], row["met"]) for row in rows] == [
        ("/api/chat c=16", cpu, met[0]),
        ("/api/chat c=1", added, met[1]),
    ]
    assert all(row["stat"] == "of_medians" and row["steal_max_pct"] == 0.5 for row in rows)


@pytest.mark.timeout(60)
def test_quick_soak_proves_every_kind_of_stream(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--soak", "--quick", "--soak-minutes", "0.15", "--soak-streams", "10", "--no-pin", "--out", str(out)]
    done = _run("bench", *argv, timeout=55)
    assert out.exists(), done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert report["scenarios"] == {}
    soak = report["soak"]
    assert soak["error"] is None
    assert soak["params"]["streams"] == 10
    figures = soak["figures"]
    bad = [name for name, value in figures.items() if not (isinstance(value, int | float) and math.isfinite(value))]
    assert bad == []

    # Every kind of stream ran, and each ended as it must.
    for kind in ("normal", "cut_fin", "cut_rst", "hang_up"):
        assert figures[f"streams_{kind}"] > 0, kind
    # A slot is briefly at zero while it opens a new connection (after a cut or a hang-up), and a
    # sample can land there on a busy machine: the load is held, give or take those moments.
    assert figures["streams_open_min"] >= 5
    assert figures["streams_open_mean"] >= 8
    assert figures["chunks"] > 0
    for zero in ("chunks_lost", "out_of_order", "chunks_duplicated", "streams_failed", "stray_error_lines"):
        assert figures[zero] == 0, zero
    cut = figures["streams_cut_fin"] + figures["streams_cut_rst"]
    assert figures["cut_streams"] == figures["cut_with_error_line"] == figures["cut_terminated"] == cut
    assert figures["cut_without_error_line"] == figures["cut_not_terminated"] == 0
    assert figures["streams_completed"] == figures["streams_normal"]
    assert figures["hang_ups"] == figures["streams_hang_up"]
    assert figures["hang_ups_unseen"] == figures["upstream_closes_unexpected"] == 0
    assert figures["small_ok"] == figures["small_requests"] > 0
    assert set(soak["stream_statuses"]) == set(soak["small_statuses"]) == {"200"}
    assert 0 < figures["gateway_rss_baseline_at_s"] < figures["gateway_rss_end_at_s"]
    assert soak["timeline"]
    assert len(soak["rss_samples"]) >= 2

    # One row per soak goal; the exit status follows them (RSS over seconds may go either way).
    goals = [goal for goal in report["goals"] if goal["goal"].startswith("soak:")]
    assert len(goals) == 9
    assert [goal["goal"] for goal in goals if not goal["met"]] in ([], [RSS_GOAL])
    assert done.returncode == (0 if all(goal["met"] for goal in goals) else 1), done.stderr[-4000:]
    assert "## (soak)" in out.with_suffix(".md").read_text()


@pytest.mark.timeout(90)
def test_instruction_counts_run_at_smoke_size() -> None:
    """`python -m bench.instructions --quick`: the gateway under callgrind, counted per small request
    and per chunk (the figures mean nothing at this size, but each must be counted)."""
    done = _run("bench.instructions", "--quick", timeout=85)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = dict(line.rsplit(": ", 1) for line in done.stdout.splitlines() if line.startswith("instructions "))
    assert [name.split(",")[0] for name in figures] == ["instructions per small request"] * 2 + [
        "instructions per relayed chunk"
    ] * 2
    assert all(int(value.replace(",", "")) > 10_000 for value in figures.values()), figures


@pytest.mark.timeout(60)
def test_floor_runs_every_side_at_smoke_size(tmp_path: Path) -> None:
    """`python -m bench.floor --quick`: the gateway, nginx (where the Makefile unpacked it) and the
    bare relay each carry the same small requests and streams whole, and each figure has its
    ratio to every floor."""
    out = tmp_path / "floor.json"
    done = _run("bench.floor", "--quick", "--no-pin", "--out", str(out), timeout=55)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    sides = ["gateway", *(["nginx"] if nginx_binary() is not None else []), "relay"]
    assert list(report["runs"]) == sides
    summary = report["summary"]
    assert list(summary) == list(FIGURES)
    for figure, row in summary.items():
        expected = sides + [f"gateway_over_{floor}" for floor in sides[1:]]
        assert list(row) == expected, figure
        assert all(_numeric(row[name]) and row[name]["median"] > 0 for name in expected), (figure, row)
    assert "| CPU per small request" in done.stdout


@pytest.mark.timeout(30)
async def test_tcprelay_carries_half_closes_and_frees_each_connection() -> None:
    """The floor's relay: a client's data (sent before the relay has connected upstream) and its
    end reach the upstream, the answer and its end come back, and both sockets are closed."""

    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.read()).upper())  # everything, up to the client's end
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(shout, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    argv = ["-m", "bench.tcprelay", "--upstream", str(port), "--lifetime", "25"]
    relay = await asyncio.create_subprocess_exec(sys.executable, *argv, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert relay.stdout is not None
        relay_port = int((await asyncio.wait_for(relay.stdout.readline(), 15)).rsplit(b":", 1)[1])

        async def exchange(index: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
            writer.write(b"hello %d" % index)
            writer.write_eof()
            try:
                return await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()

        assert await exchange(0) == b"HELLO 0"
        opened = len(os.listdir(f"/proc/{relay.pid}/fd"))
        assert [await exchange(index) for index in range(1, 21)] == [b"HELLO %d" % i for i in range(1, 21)]
        # Every pair closed once both directions ended (bounded wait for the last close).
        for _ in range(100):
            if len(os.listdir(f"/proc/{relay.pid}/fd")) <= opened:
                break
            await asyncio.sleep(0.02)
        assert len(os.listdir(f"/proc/{relay.pid}/fd")) <= opened
    finally:
        relay.terminate()
        await asyncio.wait_for(relay.wait(), 10)
        server.close()


def test_floor_ratios_pair_each_repetition_and_every_side_goes_first_in_turn() -> None:
    """A ratio is the median of each repetition's own ratio, not a ratio of medians (which would
    pair one repetition's gateway with another's floor)."""
    figure = FIGURES[0]

    def reps(*values: float) -> list[dict[str, float]]:
        return [dict.fromkeys(FIGURES, value) for value in values]

    runs = {"gateway": reps(1.0, 3.0, 2.0), "nginx": reps(1.0, 1.0, 4.0), "relay": reps(0.5, 1.5, 1.0)}
    row = floor_summary(runs)[figure]
    assert isinstance(row, dict)
    assert row["gateway_over_nginx"]["median"] == 1.0  # the ratio of the medians would be 2.0
    assert row["gateway_over_nginx"]["runs"] == [1.0, 3.0, 0.5]
    assert row["gateway_over_relay"]["runs"] == [2.0, 2.0, 2.0]
    assert row["nginx"]["median"] == 1.0
    assert [floor_order(["a", "b", "c"], rep) for rep in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
