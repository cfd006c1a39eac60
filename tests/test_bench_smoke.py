"""The benchmark harness, run at its smoke size against the real gateway, so that it never rots.

Only the shape of the report is checked here (every scenario ran, every figure is a number, no
chunk was lost): the figures themselves mean nothing at this size and on a shared machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent


def _numeric(spread: Any) -> bool:
    return isinstance(spread, dict) and all(
        isinstance(spread[stat], int | float) and math.isfinite(spread[stat]) for stat in ("median", "min", "max")
    )


@pytest.mark.timeout(60)
def test_quick_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-pin", "--max-minutes", "0.75", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert set(report["scenarios"]) == {"a", "b", "c", "d"}
    for key, scenario in report["scenarios"].items():
        assert scenario["error"] is None, (key, scenario["error"])
        assert scenario["cases"], key
        for case in scenario["cases"]:
            for side in ("direct", "gateway", "vs_direct"):
                assert case[side], (key, case["case"], side)
                bad = [name for name, spread in case[side].items() if not _numeric(spread)]
                assert bad == [], (key, case["case"], side)
            for side in ("direct", "gateway"):
                # Unpinned (--no-pin), steal is read over all CPUs.
                assert "steal_machine_pct" in case[side], (key, case["case"], side)

    for case in report["scenarios"]["b"]["cases"]:
        for side in ("direct", "gateway"):
            figures = case[side]
            assert figures["chunks_lost"]["max"] == 0
            assert figures["out_of_order"]["max"] == 0
            for failure in ("streams_refused", "streams_cut", "streams_unfinished"):
                assert figures[failure]["max"] == 0, failure
            assert figures["chunks"]["min"] == case["params"]["streams"] * case["params"]["tokens"]
    for side in ("direct", "gateway"):
        assert report["scenarios"]["c"]["cases"][0][side]["status"]["min"] == 201
        assert report["scenarios"]["d"]["cases"][0][side]["unseen"]["max"] == 0

    assert report["meta"]["features"]
    # Every goal row of a scenario says how much steal its runs saw.
    assert all(isinstance(goal["steal_max_pct"], float) for goal in report["goals"] if goal["case"] != "whole run")
    assert set(report["meta"]["steal_pct"]) == set(procstat.steal_ms()) - {"cpu"}
    assert out.with_suffix(".md").read_text().startswith("# ollama-gateway benchmark")
