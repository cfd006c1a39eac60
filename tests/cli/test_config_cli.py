"""Misspelt ``GATEWAY_*`` names are named at start-up with the closest setting; ``config`` prints
every setting's value and source, passwords masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import masked, unknown_variables
from tests.servers import free_port, gateway_process

pytestmark = pytest.mark.timeout(60)


def _environment(**extra: str) -> dict[str, str]:
    return {**{name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}, **extra}


def test_an_unknown_name_gets_the_closest_setting() -> None:
    assert unknown_variables(
        {
            "the environment": ["GATEWAY_LOG_LEVLE", "GATEWAY_PORT", "HOME", "GATEWAY_ZZZ"],
            ".env": ["gateway_uptream_url"],
        }
    ) == [
        "GATEWAY_LOG_LEVLE (in the environment) is not a setting and is ignored: did you mean GATEWAY_LOG_LEVEL?",
        "GATEWAY_ZZZ (in the environment) is not a setting and is ignored: `ollama-gateway config` lists the settings",
        "GATEWAY_UPTREAM_URL (in .env) is not a setting and is ignored: did you mean GATEWAY_UPSTREAM_URL?",
    ]


def test_passwords_in_urls_are_masked() -> None:
    assert masked("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert masked("rediss://user:pw@cache") == "rediss://user:***@cache"
    assert masked("redis://cache:6379") == "redis://cache:6379"
    assert masked(("a", "b")) == "a,b"
    assert masked(None) == ""


def test_config_prints_values_sources_and_warnings(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# comment\nexport GATEWAY_PORT=9000\nGATEWAY_UPSTREAM_URLS=http://gpu:11434\n")
    env = _environment(GATEWAY_REDIS_URL="redis://:hunter2@cache:6379/0")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["GATEWAY_PORT"] == [".env", "9000"]
    assert rows["GATEWAY_REDIS_URL"] == ["env", "redis://:***@cache:6379/0"]
    assert rows["GATEWAY_UPSTREAM_URL"] == ["default", "http://127.0.0.1:11434"]
    assert rows["GATEWAY_PUBLIC_URL"] == ["default", "-"]
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stderr == (
        "ollama-gateway: warning: GATEWAY_UPSTREAM_URLS (in .env) is not a setting and is ignored: "
        "did you mean GATEWAY_UPSTREAM_URL?\n"
    )


def test_serve_warns_once_per_unknown_name(tmp_path: Path, database_url: str) -> None:
    env = {
        "GATEWAY_UPSTREAM": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_DATABASE_URL": database_url,
    }
    with gateway_process(env, cwd=tmp_path) as gateway:
        gateway.stop()
    assert [line for line in gateway.stderr.lines if "not a setting" in line] == [
        "WARNING:  gateway: GATEWAY_UPSTREAM (in the environment) is not a setting and is ignored: "
        "did you mean GATEWAY_UPSTREAMS?\n"
    ]
