"""``ollama-gateway usage``: the report as a table, JSON and CSV, filtered and grouped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.servers import ROOT

pytestmark = pytest.mark.timeout(30)

ROWS = {
    UsageKey("2026-01-01", "k1", "alice", "llama3.2:latest"): UsageCounts(3, 30, 12, 1),
    UsageKey("2026-01-01", "k2", "bob", "qwen3:latest"): UsageCounts(1, 5, 2, 0),
    UsageKey("2026-01-02", "k1", "alice", "qwen3:latest"): UsageCounts(2, 20, 8, 0),
    UsageKey("2026-01-03", "k1", "alice", ""): UsageCounts(1, 0, 0, 1),
    UsageKey("2026-01-03", "k2", "bob", "llama3.2:latest"): UsageCounts(4, 40, 16, 2),
}


@pytest.fixture
def report(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    store = open_usage_store(database_url)
    store.add(ROWS)
    store.close()
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["usage", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_table_by_key_with_totals(report, tmp_path: Path) -> None:
    assert report() == (
        0,
        "KEY    REQUESTS  PROMPT TOKENS  COMPLETION TOKENS  ERRORS\n"
        "alice         6             50                 20       2\n"
        "bob           5             45                 18       2\n"
        "TOTAL        11             95                 38       4\n",
        f"ollama-gateway: database {tmp_path / 'gateway.db'}\n",
    )


def test_table_by_model_and_by_day(report) -> None:
    assert report("--by", "model")[1] == (
        "MODEL            REQUESTS  PROMPT TOKENS  COMPLETION TOKENS  ERRORS\n"
        "-                       1              0                  0       1\n"
        "llama3.2:latest         7             70                 28       3\n"
        "qwen3:latest            3             25                 10       0\n"
        "TOTAL                  11             95                 38       4\n"
    )
    assert report("--by", "day", "--key", "alice")[1] == (
        "DAY         REQUESTS  PROMPT TOKENS  COMPLETION TOKENS  ERRORS\n"
        "2026-01-01         3             30                 12       1\n"
        "2026-01-02         2             20                  8       0\n"
        "2026-01-03         1              0                  0       1\n"
        "TOTAL              6             50                 20       2\n"
    )


def test_json(report) -> None:
    code, out, _ = report("--json", "--by", "model", "--since", "2026-01-02", "--until", "2026-01-03")
    assert code == 0
    assert json.loads(out) == {
        "by": "model",
        "since": "2026-01-02",
        "until": "2026-01-03",
        "key": None,
        "rows": [
            {"model": None, "requests": 1, "prompt_tokens": 0, "completion_tokens": 0, "errors": 1},
            {"model": "llama3.2:latest", "requests": 4, "prompt_tokens": 40, "completion_tokens": 16, "errors": 2},
            {"model": "qwen3:latest", "requests": 2, "prompt_tokens": 20, "completion_tokens": 8, "errors": 0},
        ],
        "total": {"requests": 7, "prompt_tokens": 60, "completion_tokens": 24, "errors": 3},
    }


def test_csv(report, tmp_path: Path) -> None:
    assert report("--csv", "--by", "day", "--until", "2026-01-02") == (
        0,
        "day,requests,prompt_tokens,completion_tokens,errors\n2026-01-01,4,35,14,1\n2026-01-02,2,20,8,0\n",
        f"ollama-gateway: database {tmp_path / 'gateway.db'}\n",
    )


def test_an_empty_selection(report) -> None:
    assert report("--key", "nobody", "--csv")[1] == "key,requests,prompt_tokens,completion_tokens,errors\n"
    assert json.loads(report("--key", "nobody", "--json")[1])["total"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "errors": 0,
    }


@pytest.mark.parametrize("bad", ["2026-13-01", "2026-02-30", "20260101", "yesterday", "2026-1-1"])
def test_dates_are_validated(report, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        report("--since", bad)
    assert exited.value.code == 2
    assert f"argument --since: {bad!r} is not a date (expected YYYY-MM-DD" in capsys.readouterr().err


def test_since_after_until(report) -> None:
    assert report("--since", "2026-01-03", "--until", "2026-01-01") == (
        2,
        "",
        "ollama-gateway: error: since 2026-01-03 is after until 2026-01-01\n",
    )


def test_a_missing_database_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    missing = tmp_path / "typo.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{missing}")
    assert main(["usage"]) == 1
    assert capsys.readouterr().err.startswith(f"ollama-gateway: error: no database at {missing} (")
    assert not missing.exists()


def test_the_installed_command(database_url: str) -> None:
    store = open_usage_store(database_url)
    store.add(ROWS)
    store.close()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "--json", "--key", "bob"],
        env={"GATEWAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout)["rows"] == [
        {"key": "bob", "requests": 5, "prompt_tokens": 45, "completion_tokens": 18, "errors": 2}
    ]
